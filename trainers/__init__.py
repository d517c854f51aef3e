"""Dictionary training: corpus, activation harvesting, the loop (the losses live with the
architectures in `saecircuits.dictionaries`).

    from trainers import TrainConfig, train_saes, evaluate_saes, default_corpus
    saes = train_saes(model, tok, TrainConfig(hooks=["resid.10"], tokens=204_800, out="out/"))
    metrics = evaluate_saes(model, tok, saes, default_corpus(tok), n_tokens=8192)
"""
from .corpus import TokenCorpus, default_corpus, load_corpus, load_documents
from .evaluate import evaluate_saes
from .train import TrainConfig, train_saes

__all__ = ["TrainConfig", "train_saes", "evaluate_saes", "default_corpus", "load_corpus",
           "load_documents", "TokenCorpus"]
