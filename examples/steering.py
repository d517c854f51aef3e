"""Steering SmolLM2 with SAE features: three demonstrations.

  (a) clamp the top closing-parenthesis feature high → P(")"-starting tokens) rises on held-out
      prompts where ")" is not due;
  (b) zero-ablate the top IOI features → the IOI logit difference logit(IO) − logit(S) drops;
  (c) a topic feature (found from its top-activating contexts) clamped high or added changes
      free text (food words counted in held-out generations).

Features for (a) and (b) are selected by gradient × activation of the task metric at the last
token (`attribution_features`, through `splice(track_grad=True)`); the topic feature of (c) by
contrastive mean activation difference (food vs other texts), then the intervention that adds the
most food words on SELECT prompts is reported on NEUTRAL ones. Selection prompts are disjoint
from evaluation prompts.

    python examples/steering.py --saes runs/saes [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import random
import re

import torch

from saecircuits import SAESet, load_model
from saecircuits.steering import Intervention, attribution_features, contrastive_features, feature_activations, steer
from saecircuits.export.dashboards import top_contexts
from saecircuits.tasks import ioi_task, parens_task
from saecircuits.tasks.parens import closing_ids

NO_PAREN = ["The weather today is", "She opened the door and", "def area(width, height):\n    return width",
            "The committee met on Tuesday to discuss", "x = a + b", "In 1905 Einstein published",
            "Our results show that the method", "for item in items:\n    print(item"[:-5]]

TOPICS = {
    "food": ["Stir the onions and garlic in olive oil, then add the tomatoes and simmer the sauce.",
             "Bake the bread for forty minutes until the crust is golden and the kitchen smells of yeast.",
             "The chef seasoned the soup with salt, pepper and fresh basil before serving it hot.",
             "Whisk the eggs with sugar and butter, fold in the flour and pour the batter into a cake tin.",
             "For dinner we roasted a chicken with potatoes, carrots and a lemon and herb butter.",
             "Chop the vegetables, fry them in a hot wok with soy sauce and serve over steamed rice."],
    "other": ["The train left the station at nine and arrived in the city two hours later.",
              "The committee approved the budget after a long debate about taxes and schools.",
              "The telescope captured images of a distant galaxy and its spiral arms.",
              "He repaired the bicycle, oiled the chain and pumped up both tyres.",
              "The football team won the match with a late goal in the final minute.",
              "The software update fixed a bug that crashed the program on startup."],
}
SELECT = ["I woke up this morning and", "The best thing about my town is", "Yesterday my friend told me that"]
NEUTRAL = ["My favourite part of the weekend is", "Here is what happened at the meeting:",
           "The old man walked slowly to", "After school the children", "Last summer we travelled to",
           "The letter on the table said"]
FOOD_WORDS = re.compile(
    r"\b(food|cook\w*|recipe\w*|eat\w*|dish\w*|meal\w*|sauce|salt|oil|flour|butter|sugar|bread|soup|"
    r"bak\w*|chef|kitchen|garlic|onion\w*|tomato\w*|pepper|cheese|rice|chicken|vegetable\w*|fruit\w*|"
    r"delicious|flavou?r\w*|tast\w*|herb\w*|spice\w*|dinner|lunch|breakfast|egg\w*|milk|cream|cake|"
    r"coffee|tea|wine|meat|fish|potato\w*|salad|fry|fried|roast\w*|grill\w*)\b", re.I)


def demo_parens(model, tok, saes, hook: str, top: int, factor: float) -> dict:
    task = parens_task(tok, n=48, seed=0)
    pick, held = task.take(slice(0, 32)), task.take(slice(32, 48))
    (feature, diff), = attribution_features(model, saes, hook, pick.clean, pick.metric, tok, top=1)
    acts = torch.stack([f[-1, feature] for f in feature_activations(model, saes, hook, pick.clean, tok)])
    value = factor * float(acts.max())
    prompts = held.patch + NO_PAREN  # ")" is not due: brackets are square or absent
    group = closing_ids(tok)
    res = steer(model, saes, prompts, [Intervention(hook, feature, "set", value, positions=[-1])], 1,
                tokenizer=tok, track=group)
    base, steered = res.baseline_probs[:, 0].sum(-1), res.steered_probs[:, 0].sum(-1)
    return {"hook": hook, "feature": feature, "attribution": diff, "clamp_value": value, "prompts": len(prompts),
            "p_close_baseline": float(base.mean()), "p_close_steered": float(steered.mean()),
            "mean_shift": float((steered - base).mean()), "rows_raised": int((steered > base).sum())}


def _ioi_logit_diff(res, task, names: list[int], logits) -> torch.Tensor:
    col = {t: i for i, t in enumerate(names)}
    io = torch.tensor([col[int(t)] for t in task.clean_ids])
    s = torch.tensor([col[int(t)] for t in task.patch_ids])
    rows = torch.arange(len(task))
    return logits[rows, 0, io] - logits[rows, 0, s]


def demo_ioi(model, tok, saes, hook: str, top: int) -> dict:
    task = ioi_task(tok, n=48, seed=0)
    pick, held = task.take(slice(0, 32)), task.take(slice(32, 48))
    chosen = attribution_features(model, saes, hook, pick.clean, pick.metric, tok, top=top)
    features = [f for f, _ in chosen]
    names = sorted({int(t) for t in held.clean_ids} | {int(t) for t in held.patch_ids})
    out = {"hook": hook, "features": features}
    rng = random.Random(0)
    control = rng.sample([i for i in range(saes[hook].cfg.d_sae) if i not in features], len(features))
    for label, feats in (("top", features), ("random", control)):
        res = steer(model, saes, held.clean, [Intervention(hook, feats, "ablate", positions="prompt")], 1,
                    tokenizer=tok, track=names)
        base = _ioi_logit_diff(res, held, names, res.baseline_logits)
        steered = _ioi_logit_diff(res, held, names, res.steered_logits)
        out[f"{label}_logit_diff_baseline"] = float(base.mean())
        out[f"{label}_logit_diff_ablated"] = float(steered.mean())
        out[f"{label}_drop"] = float((base - steered).mean())
    return out


def food_words(text: str) -> int:
    return len(FOOD_WORDS.findall(text))


def demo_topic(model, tok, saes, hook: str, factor: float, new_tokens: int, candidates: int,
               adds: list[float]) -> dict:
    """Find food features by contrast, pick the (feature, intervention) that puts the most food
    words into generations from SELECT prompts, then report it on the held-out NEUTRAL prompts."""
    feats = contrastive_features(model, saes, hook, TOPICS["food"], TOPICS["other"], tok,
                                 top=candidates, position=None)
    found = top_contexts(model, tok, saes, [(hook, f) for f, _ in feats], TOPICS["food"] + TOPICS["other"], n=5)
    tried = []
    for feature, diff in feats:
        peak = found[(hook, feature)][0].max if found[(hook, feature)] else 1.0
        for mode, value in [("set", factor * peak)] + [("add", a) for a in adds]:
            res = steer(model, saes, SELECT, [Intervention(hook, feature, mode, value)], new_tokens,
                        tokenizer=tok, baseline=False)   # selection needs only the steered text
            tried.append({"feature": feature, "contrast": diff, "mode": mode, "value": value,
                          "select_food_words": sum(food_words(t) for t in res.steered)})
    best = max(tried, key=lambda t: t["select_food_words"])
    feature, mode, value = best["feature"], best["mode"], best["value"]
    res = steer(model, saes, NEUTRAL, [Intervention(hook, feature, mode, value)], new_tokens, tokenizer=tok)
    return {"hook": hook, "feature": feature, "contrast": best["contrast"], "mode": mode, "value": value,
            "tried": tried,
            "top_contexts": [{"activation": c.max, "context": c.marked(before=8, after=0)}
                             for c in found[(hook, feature)]],
            "food_words_baseline": sum(food_words(t) for t in res.baseline),
            "food_words_steered": sum(food_words(t) for t in res.steered),
            "generations": [{"prompt": p, "baseline": b, "steered": s}
                            for p, b, s in zip(res.prompts, res.baseline, res.steered)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saes", required=True, help="SAE set trained on SmolLM2 (e.g. from train_saes.py)")
    parser.add_argument("--parens-hook", default="resid.23", help="hook of the parens clamp")
    parser.add_argument("--ioi-hook", default="resid.23")
    parser.add_argument("--topic-hook", default="resid.10")
    parser.add_argument("--ioi-top", type=int, default=10)
    parser.add_argument("--factor", type=float, default=3.0, help="clamp = factor × max observed activation")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--topic-candidates", type=int, default=3, help="contrastive food features tried")
    parser.add_argument("--topic-adds", default="4,8", help="decoder-row multiples tried in `add` mode")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(device="cpu")
    hooks = sorted({args.parens_hook, args.ioi_hook, args.topic_hook})
    saes = SAESet.load(args.saes, model=model, hooks=hooks)
    results = {"saes": args.saes,
               "parens": demo_parens(model, tok, saes, args.parens_hook, 1, args.factor),
               "ioi": demo_ioi(model, tok, saes, args.ioi_hook, args.ioi_top),
               "topic": demo_topic(model, tok, saes, args.topic_hook, args.factor, args.new_tokens,
                                   args.topic_candidates, [float(a) for a in args.topic_adds.split(",")])}
    p = results["parens"]
    print(f"(a) parens: {p['hook']} feature {p['feature']} clamped to {p['clamp_value']:.2f} at the last token: "
          f"P(')'…) {p['p_close_baseline']:.4f} -> {p['p_close_steered']:.4f} "
          f"(mean shift {p['mean_shift']:+.4f}, raised on {p['rows_raised']}/{p['prompts']} prompts)")
    i = results["ioi"]
    print(f"(b) IOI: zero-ablating top {len(i['features'])} features at {i['hook']}: logit diff "
          f"{i['top_logit_diff_baseline']:.3f} -> {i['top_logit_diff_ablated']:.3f} (drop {i['top_drop']:.3f}); "
          f"{len(i['features'])} random features: drop {i['random_drop']:.3f}")
    t = results["topic"]
    print(f"(c) topic: {t['hook']} feature {t['feature']} (food vs other, contrast {t['contrast']:.2f}; "
          f"best of {len(t['tried'])} feature x intervention tries on separate prompts); top contexts:")
    for c in t["top_contexts"]:
        print(f"      {c['activation']:7.2f}  {c['context']!r}")
    print(f"    {t['mode']} {t['value']:.2f} at every position, on {len(t['generations'])} held-out prompts: "
          f"food words {t['food_words_baseline']} -> {t['food_words_steered']}")
    for g in t["generations"]:
        print(f"    prompt   {g['prompt']!r}\n    baseline {g['baseline']!r}\n    steered  {g['steered']!r}")
    if args.json:
        from saecircuits.fileio import write_json

        write_json(args.json, results)


if __name__ == "__main__":
    main()
