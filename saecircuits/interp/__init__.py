"""Automatic interpretability (explain + simulate scoring, Bills et al. 2023) and feature
universality (MMCS / activation correlation between SAEs).

    from saecircuits.interp import load_explanations
    labels = load_explanations("runs/explain")      # {"resid.10:123": "...", ...}
"""
from .backends import AnswerCache, EndpointBackend, ExplainerError, LocalBackend, make_backend
from .contexts import (Basis, ExcerptConfig, collect_hook_activations, ica_basis, neuron_basis,
                       pca_basis, sae_basis, split_excerpts)
from .explain import ScoreConfig, UnitScore, score_unit
from .pipeline import ExplainConfig, bootstrap_ci, load_explanations, run_explain, unit_key
from .universality import compare_saes, decoder_mmcs, max_correlation

__all__ = ["AnswerCache", "EndpointBackend", "ExplainerError", "LocalBackend", "make_backend",
           "Basis", "ExcerptConfig", "collect_hook_activations", "ica_basis", "neuron_basis",
           "pca_basis", "sae_basis", "split_excerpts", "ScoreConfig", "UnitScore", "score_unit",
           "ExplainConfig", "bootstrap_ci", "load_explanations", "run_explain", "unit_key",
           "compare_saes", "decoder_mmcs", "max_correlation"]
