"""Dictionary training: corpus, activation harvesting, the loop (the losses live with the
architectures in `saecircuits.dictionaries`).

    from trainers import TrainConfig, train_saes, evaluate_saes, default_corpus
    saes = train_saes(model, tok, TrainConfig(hooks=["resid.10"], tokens=204_800, out="out/"))
    metrics = evaluate_saes(model, tok, saes, default_corpus(tok), n_tokens=8192)

Names are imported on first use, so `trainers.config` (and `saecircuits train --help`) loads no
torch.
"""
from importlib import import_module

_LAZY = {"TrainConfig": "config", "TranscoderRecipe": "config", "train_saes": "train",
         "evaluate_saes": "evaluate", "default_corpus": "corpus", "load_corpus": "corpus",
         "load_documents": "corpus", "TokenCorpus": "corpus"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trainers' has no attribute {name!r}")
