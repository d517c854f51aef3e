"""SAE training loop: architectures, outputs, resume (invariant 7), bad inputs."""
from __future__ import annotations

import json

import pytest
import torch

from saecircuits.errors import ConfigError, HookPointError, TrainingError
from saecircuits.sae import SAE, SAESet
from trainers import TrainConfig, evaluate_saes, train_saes
from trainers import activations as act
from trainers import train as train_mod
from tests.helpers import assert_model_clean

TEXTS = [("def f%d(x):\n    return (x + %d) * [i for i in range(%d)]\n" % (i, i, i)) * 3
         + f"Mary and John went to store number {i}. John gave a drink to Mary. " * 2
         for i in range(60)]


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(hooks=["resid.0", "resid.2"], architecture="topk", k=4, expansion=2, tokens=2016,
                context=32, windows_per_block=8, model_batch=8, eval_tokens=0, holdout=0.0,
                out=str(tmp_path / "out"), progress=False, checkpoint_every=4)
    base.update(kw)
    return TrainConfig(**base)


def _weights(folder):
    saes = SAESet.load(folder)
    return {h: s.state_tensors() for h, s in saes.items()}


@pytest.mark.parametrize("arch", ["topk", "relu", "batchtopk", "jumprelu"])
def test_each_architecture_trains_and_saves_a_loadable_set(tiny, tmp_path, arch):
    model, tok = tiny
    sparsity = {"relu": 0.05, "jumprelu": 0.05}.get(arch)  # 32 steps on a tiny random model
    cfg = _cfg(tmp_path, architecture=arch, tokens=4032, eval_tokens=124, holdout=0.1, l1=sparsity)
    saes = train_saes(model, tok, cfg, corpus=TEXTS)
    loaded = SAESet.load(cfg.out, model=model)
    assert set(loaded) == {"resid.0", "resid.2"}
    for hook, sae in loaded.items():
        assert sae.cfg.architecture == arch and sae.cfg.normalization_scale > 0
        torch.testing.assert_close(sae.W_dec, saes[hook].W_dec)
        metrics = json.loads((tmp_path / "out" / hook / "metrics.json").read_text())
        for key in ("l0", "explained_variance", "mse", "dead_fraction", "dense_fraction",
                    "ce_loss_score", "kl_score"):
            assert key in metrics
        assert metrics["explained_variance"] > 0.2, metrics
        assert (tmp_path / "out" / hook / "density.svg").read_text().startswith("<svg")
        if arch == "topk":
            assert metrics["l0"] <= 4
        if arch in ("batchtopk", "jumprelu"):
            assert (sae.threshold > 0).all()
    assert_model_clean(model)


def test_normalisation_is_folded_into_saved_weights():
    from saecircuits.dictionaries import DictionaryConfig
    from saecircuits.dictionaries.kernels import sparse_topk
    from trainers.loop import Trainer

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen) * 0.05 + 0.3  # raw activations, small norms
    scale = 4.0 / float(x.norm(dim=1).mean())             # sqrt(d_in) / mean norm
    trainer = Trainer(DictionaryConfig("topk", 16, 64, k=4, hook="resid.0"), total_steps=20)
    for step in range(20):
        trainer.step(x * scale, x * scale, step)
    dic = trainer.dictionary
    with torch.no_grad():   # the training-space reconstruction, before folding
        vals, idx = sparse_topk(dic.W_enc.T, dic.b_enc, x * scale - dic.b_dec, 4)
        recon = torch.nn.functional.embedding_bag(idx, dic.W_dec, per_sample_weights=vals,
                                                  mode="sum") + dic.b_dec
    sae = trainer.finished(scale, None, "", {})
    with torch.no_grad():
        torch.testing.assert_close(sae(x), recon / scale, atol=1e-5, rtol=1e-4)
    assert sae.cfg.normalization_scale == pytest.approx(scale)


def test_transcoder_scales_are_folded_into_saved_weights():
    """A skip transcoder trained on x·s_in -> y·s_out predicts raw y from raw x after folding."""
    from saecircuits.dictionaries import DictionaryConfig
    from trainers.loop import Trainer

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=gen) * 0.05 + 0.3
    y = torch.relu(x @ torch.randn(16, 12, generator=gen)) * 3.0
    s_in, s_out = 4.0 / float(x.norm(dim=1).mean()), 12 ** 0.5 / float(y.norm(dim=1).mean())
    cfg = DictionaryConfig("topk", 16, 64, k=4, hook="mlp_in.0", write_hook="mlp.0", d_out=12, skip=True)
    trainer = Trainer(cfg, total_steps=30)
    for step in range(30):
        trainer.step(x * s_in, y * s_out, step)
    with torch.no_grad():
        scaled = trainer.dictionary(x * s_in)
    tc = trainer.finished(s_in, s_out, "", {})
    with torch.no_grad():
        torch.testing.assert_close(tc(x), scaled / s_out, atol=1e-5, rtol=1e-4)
    assert tc.is_transcoder and tc.cfg.output_scale == pytest.approx(s_out)


def test_several_sizes_at_one_hook_train_from_the_same_batches(tiny, tmp_path):
    model, tok = tiny
    cfg = _cfg(tmp_path, hooks=["resid.1"], k=[4, 8], expansion=[2])
    saes = train_saes(model, tok, cfg, corpus=TEXTS)
    assert list(saes) == ["resid.1"] and saes["resid.1"].cfg.k == 4
    other = SAE.load(tmp_path / "out" / "variants" / "k8-x2" / "resid.1")
    assert other.cfg.k == 8
    from saecircuits.sae import SAESet
    assert SAESet.load(tmp_path / "out")["resid.1"].cfg.k == 4          # the main set, not a variant
    assert SAESet.load(tmp_path / "out", variant="k8-x2")["resid.1"].cfg.k == 8


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_resumed_training_equals_uninterrupted(tiny, tmp_path, arch, monkeypatch):
    """Invariant 7: resume from a checkpoint gives the same weights as one run (CPU), and it
    does resume (a run that started over would also end at the same weights): it harvests
    only the blocks of windows after the checkpoint."""
    model, tok = tiny
    real, windows = act.harvest, []

    def counting(model, points, ids, *args, **kwargs):
        windows.append(ids.shape[0])
        return real(model, points, ids, *args, **kwargs)

    monkeypatch.setattr(act, "harvest", counting)
    straight = _cfg(tmp_path / "a", architecture=arch)
    train_saes(model, tok, straight, corpus=TEXTS)
    whole = sum(windows)
    interrupted = _cfg(tmp_path / "b", architecture=arch, stop_at_step=5)
    train_saes(model, tok, interrupted, corpus=TEXTS)
    windows.clear()
    resumed = _cfg(tmp_path / "b", architecture=arch, resume=True)
    train_saes(model, tok, resumed, corpus=TEXTS)
    assert 0 < sum(windows) < whole, (sum(windows), whole)
    a, b = _weights(straight.out), _weights(resumed.out)
    for hook in a:
        for name in a[hook]:
            assert torch.equal(a[hook][name], b[hook][name]), (hook, name)


def test_resume_with_changed_config_names_the_fields(tiny, tmp_path):
    model, tok = tiny
    train_saes(model, tok, _cfg(tmp_path, stop_at_step=4), corpus=TEXTS)
    with pytest.raises(ConfigError, match=r"k: 4 -> 8.*lr|lr.*k: 4 -> 8"):
        train_saes(model, tok, _cfg(tmp_path, k=8, lr=1e-2, resume=True), corpus=TEXTS)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_saes(model, tok, _cfg(tmp_path / "x", resume=True), corpus=TEXTS)


def test_unknown_hook_and_tiny_token_budget_are_errors(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(HookPointError, match="resid.99"):
        train_saes(model, tok, _cfg(tmp_path, hooks=["resid.0", "resid.99"]), corpus=TEXTS)
    with pytest.raises(ConfigError, match="tokens=100 is smaller than one batch"):
        train_saes(model, tok, _cfg(tmp_path, tokens=100), corpus=TEXTS)
    with pytest.raises(ConfigError, match="too short"):
        train_saes(model, tok, _cfg(tmp_path, tokens=10**7), corpus=TEXTS)
    with pytest.raises(ConfigError, match="no non-empty documents"):
        train_saes(model, tok, _cfg(tmp_path), corpus=["", "  "])


def test_nan_activations_stop_training_and_keep_the_checkpoint(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    cfg = _cfg(tmp_path, tokens=4032)
    real, calls = act.harvest, []

    def poisoned(model, points, ids, attention_mask=None, **kwargs):
        out = real(model, points, ids, attention_mask, **kwargs)
        calls.append(1)
        if len(calls) > 2:  # third block of windows (a checkpoint was written after two)
            out["resid.2"][0, 0] = float("inf")
        return out

    monkeypatch.setattr(act, "harvest", poisoned)
    with pytest.raises(TrainingError, match="resid.2"):
        train_saes(model, tok, cfg, corpus=TEXTS)
    ckpt = tmp_path / "out" / train_mod.CHECKPOINT
    assert ckpt.is_file()
    monkeypatch.setattr(act, "harvest", real)
    train_saes(model, tok, _cfg(tmp_path, tokens=4032, resume=True), corpus=TEXTS)  # loads fine
    assert_model_clean(model)


def test_unwritable_output_and_failed_checkpoint_write(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="not writable"):
        train_saes(model, tok, _cfg(tmp_path, out=str(blocker / "out")), corpus=TEXTS)
    cfg = _cfg(tmp_path, tokens=4032)
    real, writes = train_mod.write_safetensors, []

    def disk_full(path, tensors, metadata=None):
        writes.append(path)
        if len(writes) > 1:
            raise OSError(28, "No space left on device")
        real(path, tensors, metadata)

    monkeypatch.setattr(train_mod, "write_safetensors", disk_full)
    with pytest.raises(TrainingError, match="No space left"):
        train_saes(model, tok, cfg, corpus=TEXTS)
    monkeypatch.setattr(train_mod, "write_safetensors", real)
    ckpt = tmp_path / "out" / train_mod.CHECKPOINT
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as fh:
        fingerprint = json.loads(fh.metadata()["saecircuits"])["config"]
    specs = train_mod.build_specs(model, cfg)
    trainers = {s.name: train_mod.make_trainer(s, cfg.tokens // cfg.batch_size, 0, 10**6, "cpu")
                for s in specs}
    step, scales = train_mod.load_checkpoint(ckpt, trainers, fingerprint)
    assert step == 4 and set(scales) == {"resid.0", "resid.2"}  # the first checkpoint is intact


def test_evaluate_reports_ce_scores_against_zero_ablation(tiny, tmp_path):
    model, tok = tiny
    saes = train_saes(model, tok, _cfg(tmp_path), corpus=TEXTS)
    metrics = evaluate_saes(model, tok, saes, TEXTS[:5], n_tokens=62, context=32, progress=False)
    for m in metrics.values():
        assert m["tokens"] == 62 and m["ce_zero"] > 0 and m["kl_zero"] >= m["kl_sae"] >= 0
        assert sum(m["density_histogram"]["counts"]) == saes["resid.0"].cfg.d_sae
    with pytest.raises(ConfigError):
        evaluate_saes(model, tok, saes, TEXTS[:5], n_tokens=0)


@pytest.mark.slow
def test_smollm2_saes_on_real_text_reconstruct_and_splice(smol, smol_saes, smol_saes_dir):
    """Real model, real text: the session's trained SAEs explain most variance and keep CE."""
    from trainers import default_corpus

    model, tok = smol
    assert set(smol_saes) == {"resid.6", "resid.16", "resid.24"}
    held_out = default_corpus(tok).split(0.02, seed=0, min_holdout_tokens=510)[1]
    metrics = evaluate_saes(model, tok, {"resid.16": smol_saes["resid.16"]}, held_out,
                            n_tokens=510, progress=False)["resid.16"]
    assert metrics["l0"] <= 32 and metrics["explained_variance"] > 0.4, metrics
    assert metrics["ce_loss_score"] > 0.6 and metrics["ce_sae"] < metrics["ce_zero"], metrics
    cfg = json.loads((smol_saes_dir / "train_config.json").read_text())
    assert cfg["tokens"] == 61_200 and (smol_saes_dir / "checkpoint.safetensors").is_file()


def test_cli_train_then_eval(tiny_dir, tmp_path, capsys):
    from saecircuits.cli import main

    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    out = tmp_path / "saes"
    code = main(["train", "--model", str(tiny_dir("llama")), "--device", "cpu", "--hooks",
                 "resid.0,resid.1", "--k", "4", "--expansion", "2", "--tokens", "1000",
                 "--context", "32", "--corpus", str(corpus), "--eval-tokens", "62",
                 "--out", str(out), "--quiet", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["metrics"]) == {"resid.0", "resid.1"}
    assert set(SAESet.load(out)) == {"resid.0", "resid.1"}
    meta = SAESet.load(out)["resid.1"].cfg.metadata   # both costs recorded, same run
    assert meta["train_seconds"] >= 0 and meta["eval_seconds"] >= 0 and "metrics" in meta
    code = main(["eval", "--model", str(tiny_dir("llama")), "--device", "cpu", "--saes", str(out),
                 "--corpus", str(corpus), "--tokens", "62", "--context", "32", "--json",
                 "--out", str(tmp_path / "ev")])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["resid.1"]["dead_fraction"] <= 1 and metrics["resid.1"]["l0"] <= 4
    assert (tmp_path / "ev" / "resid.1" / "density.svg").is_file()
    assert main(["train", "--model", str(tiny_dir("llama")), "--device", "cpu", "--hooks", "resid.7",
                 "--corpus", str(corpus), "--out", str(tmp_path / "bad"), "--quiet"]) == 2


def test_sparse_topk_gradients_match_the_dense_computation():
    """The sparse backward of the TopK encoder equals autograd through the dense pre-activations."""
    from saecircuits.dictionaries.kernels import sparse_topk

    gen = torch.Generator().manual_seed(3)
    enc = torch.randn(40, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(40, generator=gen, dtype=torch.float64, requires_grad=True)
    x_c = torch.randn(9, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    vals, idx = sparse_topk(enc, b_enc, x_c, 5)
    grads = torch.autograd.grad((vals * weights).sum(), (enc, b_enc, x_c))
    dense = torch.relu((x_c @ enc.T + b_enc).gather(1, idx))
    torch.testing.assert_close(vals, dense)
    for got, want in zip(grads, torch.autograd.grad((dense * weights).sum(), (enc, b_enc, x_c))):
        torch.testing.assert_close(got, want)
    # low-precision selection: same latents here (no near-ties), values still exact
    x32, enc32, b32 = x_c.detach().float(), enc.detach().float(), b_enc.detach().float()
    exact_vals, exact_idx = sparse_topk(enc32, b32, x32, 5)
    fast_vals, fast_idx = sparse_topk(enc32, b32, x32, 5, select_dtype=torch.bfloat16)
    order = exact_idx.argsort(dim=-1)
    assert torch.equal(fast_idx, exact_idx.gather(1, order))
    torch.testing.assert_close(fast_vals, exact_vals.gather(1, order))
