"""Config dataclasses of tracing and attribution graphs, importable without torch.

Each field carries its command-line option (`config_args.cli` metadata), so `saecircuits trace`
and `saecircuits graph` are generated from these definitions (`config_args.add_config_arguments`):
one place for every option's name, default and help.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from .config_args import cli
from .errors import ConfigError


def _length(text: str):
    """argparse type of --length: an integer >= 2 or 'common'."""
    if text == "common":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 or 'common', got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    from .cli import nonnegative_float

    return nonnegative_float(text)


def _unit_float(text: str) -> float:
    from .cli import unit_float

    return unit_float(text)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


PRECISION_CHOICES = ("auto", "fp32", "bf16")


@dataclass
class TraceConfig:
    """Options of `trace_circuit` (see its docstring)."""

    method: str = field(default="attrib", metadata=cli(
        "node attribution: attribution patching, integrated gradients, exact", choices=("attrib", "ig", "exact")))
    ablation: str = field(default="patch", metadata=cli(
        "what a node is ablated to when its effect is measured", choices=("patch", "zero", "mean", "resample")))
    n: int = field(default=64, metadata=cli("number of prompts"))
    top_k: int | None = field(default=None, metadata=cli("keep the K largest feature nodes (default 100 when no "
                                                         "other rule is given)"))
    node_threshold: float | None = field(default=None, metadata=cli(
        "keep nodes with |effect| >= T (default: --top-k 100)", type=_nonnegative_float))
    influence: float | None = field(default=None, metadata=cli(
        "keep the fewest nodes reaching this share of total |effect| (default: --top-k 100)", type=_unit_float))
    edge_influence: float = field(default=0.98, metadata=cli(
        "keep the fewest edges reaching this share of total |weight|", type=_unit_float))
    positional: bool = field(default=False, metadata=cli(
        "one node per token position (default: features summed over positions, pos '*')"))
    steps: int = field(default=10, metadata=cli("integrated-gradients steps"))
    batch_size: int = field(default=32, metadata=cli("prompts per model pass"))
    chunk_tokens: int = field(default=256, metadata=cli(
        "at most this many padded tokens per model pass (fewer prompts than --batch-size when they are "
        "long; at least one prompt); bounds memory (the edge pass's batched backward peaks at ~3.3 MB "
        "per token on SmolLM2)"))
    eval_ablation: str | None = field(default=None, metadata=cli(
        "ablation of the circuit's complement in faithfulness (default: patch when the task has patch "
        "prompts, else mean)", choices=("mean", "zero", "resample", "patch")))
    mean_from: "object | str | None" = field(default=None, metadata=cli(
        "take mean-ablation means from this reference set (a .jsonl file or ioi|parens|sva; default: the "
        "traced prompts themselves); it needs prompts of every token length traced", type=str,
        metavar="FILE|TASK"))
    mean_n: int = field(default=64, metadata=cli("prompts of a built-in --mean-from task"))
    length: int | str | None = field(default=None, metadata=cli(
        "keep only the prompts of this many tokens, or of the most common length (e.g. for --positional, "
        "which needs one length; default: all prompts)", type=_length, metavar="L|common"))
    seed: int = field(default=0, metadata=cli("seed of the task's prompts and resampling", type=_int))
    edges: bool = field(default=True, metadata=cli("compute edges between the kept nodes"))
    edge_eval: bool = field(default=True, metadata=cli("exact edge ablation of the final circuit"))
    edge_precision: str = field(default="fp32", metadata=cli(
        "matmul precision of the edge pass (node scores and faithfulness are always fp32: exact); bf16 "
        "runs attention on the math kernel on CPU (~2x faster edges where bf16 is fast; edge weights "
        "r > 0.9999 vs fp32 on IOI); auto: bf16 only where measured faster",
        flags=("--precision", "--edge-precision"), choices=PRECISION_CHOICES))
    progress: bool = field(default=True, metadata=cli("progress bars", skip=True))


@dataclass
class GraphConfig:
    """Options of `attribute` (circuit-tracer's defaults).

    max_n_logits / desired_logit_prob: logit targets are the top tokens up to this cumulative
    probability, at most this many. target: None (those logits) or (token a, token b): one
    contrast target logit(a) − logit(b) (weight 1). batch_size: targets per backward pass.
    max_feature_nodes: None (every active feature gets its row) or the most influential ones
    (circuit-tracer's selection). prepend_bos: start the prompt with the tokenizer's BOS (or
    first special) token when it does not start with a special token (circuit-tracer does);
    zero_first: position 0's features and error vectors are not nodes (its MLP outputs count as
    biases; circuit-tracer's zero_positions). node_threshold / edge_threshold: pruning.
    precision: the backward passes' matmuls. allow_partial: trace with transcoders at only some
    layers (the others' MLPs count as error nodes carrying their whole output).
    """

    max_n_logits: int = field(default=10, metadata=cli("logit targets (at most)"))
    desired_logit_prob: float = field(default=0.95, metadata=cli(
        "cumulative probability of the logit targets", type=_unit_float))
    target: tuple[str, str] | None = field(default=None, metadata=cli(
        "one contrast target logit(A) - logit(B) instead of the top logits (e.g. ' Mary, John')",
        type=lambda text: _pair(text), metavar="A,B"))
    batch_size: int = field(default=64, metadata=cli("targets per backward pass"))
    max_feature_nodes: int | None = field(default=None, metadata=cli(
        "compute rows for at most this many features, the most influential first (circuit-tracer's "
        "selection; default: every active feature)"))
    prepend_bos: bool = field(default=True, metadata=cli(
        "start the prompt with BOS (or the first special token) as circuit-tracer does"))
    zero_first: bool = field(default=True, metadata=cli(
        "position 0's features and errors are not nodes (circuit-tracer's zero_positions)"))
    node_threshold: float = field(default=0.8, metadata=cli(
        "pruning: keep nodes up to this cumulative influence", type=_unit_float))
    edge_threshold: float = field(default=0.98, metadata=cli(
        "pruning: keep edges up to this cumulative influence", type=_unit_float))
    precision: str = field(default="fp32", metadata=cli(
        "matmul precision of the backward passes", choices=PRECISION_CHOICES))
    allow_partial: bool = field(default=False, metadata=cli(
        "trace even where some MLPs have no transcoder (their outputs become error nodes; the summary "
        "says so)"))
    progress: bool = field(default=True, metadata=cli("progress bars", skip=True))

    def __post_init__(self) -> None:
        for name in ("max_n_logits", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_feature_nodes is not None and (not isinstance(self.max_feature_nodes, int)
                                                   or self.max_feature_nodes < 1):
            raise ConfigError(f"max_feature_nodes must be None or a positive integer, got "
                              f"{self.max_feature_nodes!r}")
        for name in ("desired_logit_prob", "node_threshold", "edge_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {value!r}")
        if self.target is not None and (not isinstance(self.target, (tuple, list)) or len(self.target) != 2):
            raise ConfigError(f"target must be None or two tokens (a, b), got {self.target!r}")


def _pair(text: str) -> tuple[str, str]:
    parts = text.split(",")
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two tokens 'A,B' (e.g. ' Mary, John'), got {text!r}")
    return parts[0], parts[1]


IOI_GRAPH_PROMPT = "Gregory and Wendy were working at the airport. Gregory decided to give the flower to"
PARENS_GRAPH_PROMPT = "The old castle (built around 1965"


@dataclass
class DemoConfig:
    """Settings of `saecircuits demo`.

    One harvest trains everything: SAEs on the attention and MLP outputs of four layers (the
    layout whose circuits carry IOI and parens, README "Results") and transcoders at every MLP
    (replacement graphs). The SAE circuits are traced on task prompts; one replacement graph is
    drawn for a held-out IOI prompt and one for a held-out parens prompt.
    """

    model: str | None = field(default=None, metadata=cli("model", skip=True))
    device: str | None = field(default=None, metadata=cli("device", skip=True))
    hooks: list[str] = field(default_factory=lambda: ["attn.4", "mlp.4", "attn.10", "mlp.10", "attn.16",
                                                      "mlp.16", "attn.23", "mlp.23"],
                             metadata=cli("SAE hook points (comma-separated)", type=str))
    tokens: int = field(default=200_000, metadata=cli("training tokens (one harvest for SAEs and transcoders)"))
    expansion: int = field(default=8, metadata=cli("SAE d_sae / d_model"))
    k: int = field(default=64, metadata=cli("SAE TopK active latents"))
    transcoders: bool = field(default=True, metadata=cli(
        "train skip transcoders at every MLP and draw replacement graphs"))
    tc_k: int = field(default=32, metadata=cli("transcoder TopK active latents"))
    tc_expansion: int = field(default=4, metadata=cli("transcoder d_sae / d_model"))
    corpus: str | None = field(default="embedded-mix:0.7", metadata=cli(
        "training corpus: embedded, narrative, embedded-mix:R, a file or folder", type=str))
    n: int = field(default=32, metadata=cli("prompts per task (SAE circuits)"))
    top_k: int = field(default=60, metadata=cli("feature nodes per SAE circuit"))
    method: str = field(default="attrib", metadata=cli("node attribution method",
                                                        choices=("attrib", "ig", "exact")))
    # 2,048 rows: an IOI graph in ~1.5 min on one CPU thread instead of ~10 (all ~12k active features),
    # replacement score 0.38 vs 0.42 (benchmarks/RESULTS.md, "Replacement graphs")
    graph_features: int | None = field(default=2048, metadata=cli(
        "replacement graphs: rows for at most this many features, most influential first (0: all)",
        type=_int))
    out: str = field(default="saecircuits-demo", metadata=cli("output directory"))
    retrain: bool = field(default=False, metadata=cli("train the dictionaries even if cached ones exist"))
    quick: bool = field(default=False, metadata=cli("a small run (fewer tokens, prompts and features)"))
    seed: int = field(default=0, metadata=cli("training and sampling seed", type=_int))
    dashboard_windows: int = 192
    compare_bases: bool | None = field(default=None, metadata=cli(
        "SAE vs PCA vs raw basis comparison at the middle residual hook (default: off; it costs minutes)"))
    basis_prompts: int = field(default=16, metadata=cli("IOI prompts of the basis comparison"))
    steer_candidates: int = field(default=6, metadata=cli(
        "parens-circuit features, and as many gradient-ranked ones, tried for the steering showcase"))
    precision: str = field(default="auto", metadata=cli(
        "matmul precision of harvesting, training, edges and dashboards: auto (bf16 only where it is "
        "measured faster), fp32 or bf16", choices=PRECISION_CHOICES))

    def __post_init__(self) -> None:
        if isinstance(self.hooks, str):
            self.hooks = [h.strip() for h in self.hooks.split(",") if h.strip()]
        if not self.hooks:
            raise ConfigError("demo needs at least one hook point (--hooks)")
        from .precision import check

        check(self.precision)
        if self.compare_bases is None:
            self.compare_bases = False
        if self.quick:
            self.tokens, self.n, self.top_k = min(self.tokens, 40_000), min(self.n, 16), min(self.top_k, 30)
            self.dashboard_windows = min(self.dashboard_windows, 64)
            self.method = "attrib"
            self.graph_features = min(self.graph_features or 1024, 1024)
        if self.graph_features is not None and (not isinstance(self.graph_features, int) or self.graph_features < 0):
            raise ConfigError(f"demo graph_features must be a non-negative integer (0: all), got {self.graph_features!r}")
        for name in ("tokens", "expansion", "k", "tc_k", "tc_expansion", "n", "top_k", "dashboard_windows",
                     "basis_prompts", "steer_candidates"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"demo {name} must be a positive integer, got {value!r}")

    def train_config(self):
        """The `trainers.TrainConfig` of the demo's SAEs and transcoders (one harvest)."""
        from trainers import TrainConfig
        from trainers.config import TranscoderRecipe

        recipe = (TranscoderRecipe(sites="all", architecture="topk", k=self.tc_k, expansion=self.tc_expansion,
                                   skip=True) if self.transcoders else None)
        return TrainConfig(hooks=list(self.hooks), architecture="topk", k=self.k,
                           expansion=self.expansion, tokens=self.tokens, seed=self.seed,
                           corpus=self.corpus, precision=self.precision, transcoders=recipe,
                           device=self.device, eval_tokens=2048)

    def trace_config(self):
        """The `TraceConfig` of the demo's SAE circuits."""
        # edges in bf16 where bf16 is measured faster: 2.1x less graph time on an AMX CPU,
        # edge weights r = 0.999998 against fp32 (benchmarks/RESULTS.md, issue 17)
        return TraceConfig(method=self.method, n=self.n, top_k=self.top_k, seed=self.seed,
                           edge_precision=self.precision)

    def graph_config(self):
        """The `GraphConfig` of the demo's replacement graphs."""
        return GraphConfig(max_feature_nodes=self.graph_features or None, precision=self.precision)
