"""What a training corpus holds: tokens by source and the share of person-name tokens.

    from trainers.composition import composition
    composition(tok, load_corpus(tok, "embedded-mix:0.7"))
    # {"tokens": ..., "documents": ..., "by_source": {"narrative": {...}, "stdlib": {...}, ...}}

Sources are the first component of the document names (`narrative`, `stdlib`, `pydoc`, or a
file name). Person-name tokens are measured by a token-level proxy (no NER model offline):
a token counts when it is a whole capitalised word, a leading space then an uppercase letter
then lowercase letters only (` Mary`, ` Paris`), that is not sentence-initial (the previous
token does not end in `. ! ? : " '` or a newline) and not in a stoplist of capitalised function
words, pronouns, titles, days and months. It over-counts place and brand names and under-counts
names split into several tokens; it is a comparison between corpora, not an absolute count.
"""
from __future__ import annotations

import re

import numpy as np

from .corpus import TokenCorpus

STOP = set("""I I'm I'll I've I'd The A An And But Or So If When While Then This That These Those
It Its He She They We You His Her Their Our Your My Me Him Them Us There Here What Who Which Where
Why How In On At To For Of From With By As Not No Yes Do Does Did Is Are Was Were Be Been Have Has
Had Will Would Can Could Should May Might Must Mr Mrs Ms Dr Sir Madam Dear Monday Tuesday Wednesday
Thursday Friday Saturday Sunday January February March April June July August September October
November December True False None Python Returns Return Example Note See Also Each After Before
Once Finally First Second Third Now One Two All Some Any Every Many Most Just Even Also Oh Well
Thank Thanks Please Hello Hi Let Let's Sincerely Best Yours Regards""".split())
_WORD = re.compile(r"^ [A-Z][a-z]+$")
_END = re.compile(r"""([.!?:"']|\n)\s*$""")


def _vocab_masks(tok) -> tuple[np.ndarray, np.ndarray]:
    """(is_capitalised_word [V], ends_sentence [V]) over the tokenizer's vocabulary."""
    n = len(tok)
    cap = np.zeros(n, dtype=bool)
    end = np.zeros(n, dtype=bool)
    for i in range(n):
        text = tok.decode([i])
        cap[i] = bool(_WORD.match(text)) and text.strip() not in STOP
        end[i] = bool(_END.search(text))
    return cap, end


def name_share(tok, tokens: np.ndarray, masks=None) -> tuple[int, int]:
    """(name tokens, all tokens) in a token array (see the module docstring)."""
    cap, end = masks or _vocab_masks(tok)
    if len(tokens) == 0:
        return 0, 0
    t = tokens.astype(np.int64)
    is_name = cap[t].copy()
    prev_end = np.concatenate([[True], end[t[:-1]]])
    is_name &= ~prev_end
    return int(is_name.sum()), int(len(t))


def composition(tok, corpus: TokenCorpus, max_tokens_per_source: int = 2_000_000) -> dict:
    """Tokens and documents by source, and the person-name token share per source and overall
    (measured on up to `max_tokens_per_source` tokens of each source)."""
    masks = _vocab_masks(tok)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(corpus.names):
        groups.setdefault(name.split("/")[0].split(":")[0], []).append(i)
    out, total_names, total_seen = {}, 0, 0
    for source, idx in sorted(groups.items()):
        lengths = corpus.offsets[np.array(idx) + 1] - corpus.offsets[np.array(idx)]
        parts, seen = [], 0
        for i in idx:
            if seen >= max_tokens_per_source:
                break
            doc = corpus.document(i)
            parts.append(doc)
            seen += len(doc)
        names, n = name_share(tok, np.concatenate(parts) if parts else np.zeros(0, np.int32), masks)
        total_names, total_seen = total_names + names, total_seen + n
        out[source] = {"documents": len(idx), "tokens": int(lengths.sum()),
                       "name_token_share": names / max(1, n), "measured_tokens": n}
    tokens = corpus.n_tokens
    for v in out.values():
        v["token_share"] = v["tokens"] / max(1, tokens)
    return {"tokens": tokens, "documents": len(corpus), "by_source": out,
            "name_token_share": total_names / max(1, total_seen)}
