"""Narrative prose sampled from a chat model itself: the embedded corpus's prose source.

The embedded code corpus (CPython sources + pydoc) has almost no narrative text: few people,
few names, little dialogue — the very things tasks such as IOI are about. This module builds
a prose corpus without any download by sampling the embedded model through its chat template
from many seeded instructions (stories, dialogue, letters, news, biographies, instructions,
descriptions, diary entries). No task prompt or task template is ever used as an instruction.

The shipped file `trainers/data/narrative.jsonl.gz` was made with

    python -m trainers.sample_corpus --out trainers/data/narrative.jsonl.gz \
        --tokens 3000000 --device cuda --batch 512 --seed 0

on one GPU (sampling on a 2-core CPU runs at ~65 tokens/s, far too slow for a first run), and
the same command regenerates a statistically equivalent corpus anywhere (GPU sampling kernels
are not bit-reproducible across hardware). Each line: {"text", "genre", "instruction", "seed"}.
The text is model output: SmolLM2-135M-Instruct is Apache-2.0, and so is this derived corpus.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

GENRES: dict[str, list[str]] = {
    "story": [
        "Write a short story about {topic}.",
        "Tell a story set in {place} about {topic}.",
        "Write a children's story about {topic}.",
        "Write a short mystery story that takes place in {place}.",
        "Write a story about two {people} who {event}.",
    ],
    "dialogue": [
        "Write a dialogue between two {people} about {topic}.",
        "Write a conversation in {place} between a {job} and a customer.",
        "Write a scene where a family talks about {topic} at dinner.",
    ],
    "letter": [
        "Write a letter to a {relation} about {topic}.",
        "Write an email to a colleague about {topic}.",
        "Write a thank-you note to a {job} who helped you.",
    ],
    "news": [
        "Write a short news report about {event_news} in {place}.",
        "Write a local newspaper article about {topic}.",
    ],
    "biography": [
        "Write a short biography of a fictional {job} from {place}.",
        "Describe the life of a famous {job} in a few paragraphs.",
    ],
    "instructions": [
        "Explain how to {task}.",
        "Give step-by-step instructions to {task}.",
    ],
    "description": [
        "Describe {place} in detail.",
        "Describe a day in the life of a {job}.",
        "Write a diary entry about {topic}.",
    ],
}

TOPICS = [
    "a lost dog", "a birthday party", "a rainy afternoon", "a new job", "moving to a new city",
    "an old friendship", "a school trip", "a broken bicycle", "a surprise visit", "a garden",
    "a storm at sea", "a missing key", "a cooking competition", "learning to swim", "a wedding",
    "a football match", "a power cut", "a secret recipe", "a long train journey", "a library book",
    "a summer holiday", "a science fair", "a village festival", "a difficult exam", "a stray cat",
    "a camping trip", "an old photograph", "a music lesson", "a hospital visit", "a lottery ticket",
    "a snowy morning", "a small bakery", "a treasure map", "a job interview", "a first day at school",
    "a neighbour's argument", "a broken promise", "a painting", "a market day", "a lost wallet",
]
PLACES = [
    "a small village", "a busy city", "a seaside town", "a mountain cabin", "a farm",
    "a university campus", "a hospital", "a train station", "a bookshop", "a harbour",
    "an island", "a forest", "a desert town", "a castle", "a market square", "an office",
    "a restaurant", "a museum", "a school", "a park",
]
PEOPLE = ["friends", "sisters", "brothers", "neighbours", "classmates", "colleagues", "strangers",
          "cousins", "travellers", "students"]
EVENTS = ["find a strange letter", "start a business together", "get lost in a forest",
          "plan a surprise", "enter a competition", "rescue an animal", "solve a puzzle",
          "open a shop", "build a boat", "go on a road trip"]
EVENTS_NEWS = ["a flood", "a new bridge", "a charity race", "a fire at a factory", "an election",
               "a new museum", "a school award", "a traffic accident", "a music festival",
               "a record harvest"]
JOBS = ["teacher", "doctor", "farmer", "baker", "nurse", "pilot", "carpenter", "scientist",
        "painter", "lawyer", "musician", "chef", "firefighter", "librarian", "engineer",
        "journalist", "gardener", "shopkeeper", "police officer", "writer"]
RELATIONS = ["grandmother", "grandfather", "friend", "teacher", "brother", "sister", "cousin",
             "neighbour", "mother", "father"]
TASKS = ["bake bread", "plant a vegetable garden", "change a bicycle tyre", "write a good essay",
         "prepare for a job interview", "train a puppy", "paint a room", "make a budget",
         "organise a party", "learn a new language", "repair a leaking tap", "start running"]

SLOTS = {"topic": TOPICS, "place": PLACES, "people": PEOPLE, "event": EVENTS,
         "event_news": EVENTS_NEWS, "job": JOBS, "relation": RELATIONS, "task": TASKS}


@dataclass(frozen=True)
class Instruction:
    genre: str
    text: str
    seed: int


def instructions(n: int, seed: int = 0) -> list[Instruction]:
    """`n` seeded instructions, genres drawn uniformly, slots filled at random."""
    rng = random.Random(seed)
    genres = sorted(GENRES)
    out = []
    for i in range(n):
        genre = rng.choice(genres)
        template = rng.choice(GENRES[genre])
        fill = {k: rng.choice(v) for k, v in SLOTS.items()}
        out.append(Instruction(genre, template.format(**fill), seed * 1_000_003 + i))
    return out


def _load(model_path: str | None, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_path is None:
        from saecircuits.models import load_model

        model, tok = load_model(device=device)
        hf = getattr(model, "_model", model)
        return hf, tok
    kwargs = {}
    gguf = None
    if model_path.endswith(".gguf"):
        gguf, model_path = os.path.basename(model_path), os.path.dirname(model_path) or "."
        kwargs["gguf_file"] = gguf
    tok = AutoTokenizer.from_pretrained(model_path, **kwargs)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    hf = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    hf = hf.to(device=device, dtype=dtype).eval()
    return hf, tok


def sample(out: str | os.PathLike, tokens: int, *, model_path: str | None = None,
           device: str = "cpu", batch: int = 32, max_new_tokens: int = 320,
           temperature: float = 0.9, top_p: float = 0.95, seed: int = 0,
           time_limit: float | None = None) -> dict:
    """Sample until `tokens` generated tokens (or `time_limit` s); write gzipped JSONL atomically.

    Returns a summary {documents, tokens, seconds, tokens_per_s, by_genre}.
    """
    import torch

    hf, tok = _load(model_path, device)
    if getattr(tok, "chat_template", None) is None:
        from saecircuits.errors import ConfigError

        raise ConfigError("the model's tokenizer has no chat template; sample_corpus needs a chat "
                          "model (pass --model with an instruct model)")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    prompts = instructions(max(1, 4 * tokens // 100), seed)
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    seen: set[str] = set()
    n_tokens, n_docs, by_genre = 0, 0, {}
    start = time.time()
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for b in range(0, len(prompts), batch):
            chunk = prompts[b:b + batch]
            texts = [tok.apply_chat_template([{"role": "user", "content": p.text}],
                                             tokenize=False, add_generation_prompt=True)
                     for p in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(chunk[0].seed)
            with torch.no_grad():
                gen = hf.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            for p, row in zip(chunk, new):
                ids = [t for t in row.tolist() if t != tok.pad_token_id and t != tok.eos_token_id]
                text = tok.decode(ids, skip_special_tokens=True).strip()
                digest = hashlib.sha256(text.encode()).hexdigest()
                if len(ids) < 16 or digest in seen:
                    continue
                seen.add(digest)
                fh.write(json.dumps({"text": text, "genre": p.genre, "instruction": p.text,
                                     "seed": p.seed}) + "\n")
                n_tokens += len(ids)
                n_docs += 1
                by_genre[p.genre] = by_genre.get(p.genre, 0) + len(ids)
            elapsed = time.time() - start
            print(f"[{elapsed:7.1f}s] {n_docs} documents, {n_tokens:,} tokens "
                  f"({n_tokens / max(elapsed, 1e-9):,.0f} tok/s)", flush=True)
            if n_tokens >= tokens or (time_limit is not None and elapsed > time_limit):
                break
    os.replace(tmp, out)
    seconds = time.time() - start
    return {"documents": n_docs, "tokens": n_tokens, "seconds": round(seconds, 1),
            "tokens_per_s": round(n_tokens / max(seconds, 1e-9), 1), "by_genre": by_genre,
            "device": device, "temperature": temperature, "top_p": top_p, "seed": seed,
            "max_new_tokens": max_new_tokens}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output .jsonl.gz")
    parser.add_argument("--tokens", type=int, default=100_000, help="generated tokens to collect")
    parser.add_argument("--model", default=None,
                        help="HF dir or .gguf file (default: the embedded SmolLM2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many s")
    args = parser.parse_args(argv)
    summary = sample(args.out, args.tokens, model_path=args.model, device=args.device,
                     batch=args.batch, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                     time_limit=args.time_limit)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
