"""Automatic interpretability (explain/simulate scoring) and SAE universality (compare-saes)."""
from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

import saecircuits as sc
from saecircuits.cli import main
from saecircuits.interp import (AnswerCache, EndpointBackend, ExplainerError, LocalBackend,
                                ScoreConfig, load_explanations)
from saecircuits.interp.contexts import Excerpt, ExcerptSplit, ica_basis, pca_basis
from saecircuits.interp.explain import (discretise, parse_explanation, parse_json_activations,
                                        score_unit, simulate_logprobs)
from saecircuits.interp.pipeline import bootstrap_ci
from saecircuits.interp.universality import compare_saes, max_correlation


# -- a local OpenAI-compatible chat server ------------------------------------------------
class ChatStub:
    """OpenAI chat-completions stub on 127.0.0.1. Explanations: "the main thing this neuron
    does is find the word 'cat'"; simulations: 10 for tokens containing "cat", else 0 (as
    JSON), unless `bad_json`; `fail_first` HTTP 500s before answering."""

    def __init__(self):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.bad_json = False
        self.fail_first = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                stub.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                if stub.fail_first > 0:
                    stub.fail_first -= 1
                    self.send_error(500)
                    return
                text = stub.answer(body["messages"])
                data = json.dumps({"choices": [{"message": {"role": "assistant",
                                                             "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 1
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):  # bounded: handles requests until stopped or 600 idle polls
        polls = 0
        while not self._stop.is_set() and polls < 600:
            self.server.handle_request()
            polls += 1

    def answer(self, messages) -> str:
        user = messages[-1]["content"]
        if "Neuron explanation" not in user:
            return "the main thing this neuron does is find the word 'cat'."
        if self.bad_json:
            return "activations: lots"
        tokens = re.findall(r"^\d+\t(.*)$", user, re.M)
        return json.dumps({"activations": [10 if "cat" in t else 0 for t in tokens]})

    def close(self):
        self._stop.set()
        self.thread.join(timeout=5)
        self.server.server_close()


@pytest.fixture
def stub():
    s = ChatStub()
    yield s
    s.close()


def _split() -> ExcerptSplit:
    def ex(words, kind):
        toks = [w + " " for w in words]
        return Excerpt(toks, [3.0 if "cat" in t else 0.0 for t in toks], kind, 0, 1)

    explain = [ex(["a", "cat", "sat"], "top"), ex(["the", "cat", "ran", "off"], "top")]
    score = [ex(["my", "cat", "is", "old"], "top"), ex(["dogs", "bark", "cat", "no"], "top"),
             ex(["the", "sun", "is", "hot"], "random")]
    return ExcerptSplit(explain, score, 3.0)


def _endpoint(stub, **kw):
    return EndpointBackend(stub.url, "stub-model", "secret", backoff=0.0,
                           sleep=lambda s: None, **kw)


def test_endpoint_backend_scores_a_perfect_simulator(stub, tmp_path):
    cache = AnswerCache(tmp_path / "cache.json")
    res = score_unit(_endpoint(stub), cache, "resid.1:5", "sae", 5, _split())
    assert res.explanation == "the word 'cat'"
    assert res.score == pytest.approx(1.0) and res.score_top == pytest.approx(1.0)
    assert res.n_tokens == 12
    assert stub.requests[0]["model"] == "stub-model"
    assert stub.headers[0]["Authorization"] == "Bearer secret"
    assert len(stub.requests) == 1 + 3  # one explanation, one simulation per scoring excerpt
    # a second run is answered from the on-disk cache
    again = score_unit(_endpoint(stub), AnswerCache(tmp_path / "cache.json"), "resid.1:5", "sae",
                       5, _split())
    assert again.score == res.score and len(stub.requests) == 4


def test_endpoint_retries_server_errors(stub, tmp_path):
    stub.fail_first = 2
    waits = []
    backend = EndpointBackend(stub.url, "m", retries=3, backoff=0.5, sleep=waits.append)
    assert "cat" in backend.chat([{"role": "user", "content": "hi"}])
    assert backend.requests == 3 and waits == [0.5, 1.0]


def test_unreachable_endpoint_is_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    backend = EndpointBackend(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.0,
                              sleep=lambda s: None, timeout=2)
    with pytest.raises(ExplainerError, match="unreachable after 2 tries") as err:
        backend.chat([{"role": "user", "content": "hi"}])
    assert "\n" not in str(err.value)


def test_invalid_json_answers_error_and_keep_cached_answers(stub, tmp_path):
    stub.bad_json = True
    path = tmp_path / "cache.json"
    with pytest.raises(ExplainerError, match="invalid JSON|no JSON"):
        score_unit(_endpoint(stub), AnswerCache(path), "resid.1:5", "sae", 5, _split(),
                   ScoreConfig(retries=1))
    kept = json.loads(path.read_text())
    assert len(kept) == 1 and "cat" in next(iter(kept.values()))  # the explanation survived
    n = len(stub.requests)
    assert n == 1 + 2  # explanation + the first simulation tried twice
    stub.bad_json = False
    res = score_unit(_endpoint(stub), AnswerCache(path), "resid.1:5", "sae", 5, _split())
    assert res.score == pytest.approx(1.0)
    assert len(stub.requests) == n + 3  # explanation not asked again


def test_parsers():
    assert parse_json_activations('```json\n{"activations": [0, 12, 3.5]}\n```', 3) == [0, 10, 3.5]
    assert parse_json_activations("sure: [1, 2]", 2) == [1.0, 2.0]
    for bad, n in (('{"activations": [1]}', 2), ("[1, \"x\"]", 2), ("nothing", 1), ("[1,", 1)):
        with pytest.raises(ExplainerError):
            parse_json_activations(bad, n)
    assert parse_explanation('The main thing this neuron does is find "closing brackets".\nx') \
        == "closing brackets"
    assert parse_explanation('the main thing this neuron does is find itself."') == "itself"
    assert parse_explanation("find the word 'cat'.") == "find the word 'cat'"
    assert parse_explanation('the main thing this neuron does is find."') == ""  # empty, no error
    assert discretise([0.0, 0.5, 1.0, -1.0], 1.0) == [0, 5, 10, 0]


def test_local_backend_with_tiny_model(tiny_dir):
    backend = LocalBackend(str(tiny_dir("llama")), device="cpu")
    assert backend.weak
    reply = backend.chat([{"role": "user", "content": "Say hi"}], max_tokens=5, prefix="Hello")
    assert reply.startswith("Hello") and len(reply) > len("Hello")
    e = Excerpt(["a ", "cat ", "\n"], [0.0, 1.0, 0.0], "top", 0, 1)
    pred = simulate_logprobs(backend, AnswerCache(None), "cats", e)
    assert len(pred) == 3 and all(0.0 <= p <= 10.0 for p in pred)
    assert len({round(p, 6) for p in pred}) > 1  # a real forward pass, not a constant


def test_batched_simulation_matches_separate_full_forwards(tiny_dir):
    """The shared-prefix simulation (prefix cache + logits at the slots only) gives the
    numbers of one full forward per excerpt, and caches them under the same keys."""
    from saecircuits.interp.explain import (_digit_tokens, _simulation_prompt,
                                            simulate_logprobs_many)

    backend = LocalBackend(str(tiny_dir("llama")), device="cpu")
    excerpts = [Excerpt(["a ", "cat ", "sat"], [0.0, 2.0, 0.0], "top", 0, 1),
                Excerpt(["the ", "dog ", "ran ", "far"], [0.0, 0.0, 1.0, 0.0], "top", 1, 1),
                Excerpt(["\n", "x"], [0.0, 0.0], "random", 2, 1)]
    cand, values = _digit_tokens(backend.tok)
    ref = []
    with torch.no_grad():
        for e in excerpts:  # the former method: every logit of the whole prompt, one by one
            ids, slots = _simulation_prompt(backend, "cats", e)
            logits = backend.model(input_ids=torch.tensor([ids])).logits[0, slots]
            probs = torch.softmax(logits.float()[:, cand], dim=-1)
            ref.append((probs @ torch.tensor(values)).tolist())
    cache = AnswerCache(None)
    got = simulate_logprobs_many(backend, cache, "cats", excerpts)
    assert [len(p) for p in got] == [3, 4, 2]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(ref), atol=1e-4)
    assert len({round(v, 4) for v in np.concatenate(got)}) > 2  # not a constant
    assert len(cache) == 3
    again = [simulate_logprobs(backend, cache, "cats", e) for e in excerpts]
    assert again == got and cache.hits == 3  # same keys: old caches stay valid


def test_model_without_chat_template(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "no-template"
    import shutil
    shutil.copytree(tiny_dir("llama"), folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = None
    tok.save_pretrained(folder)
    for f in folder.glob("chat_template*"):
        f.unlink()
    with pytest.raises(ExplainerError, match="has no chat template"):
        LocalBackend(str(folder), device="cpu")


# -- bases ----------------------------------------------------------------------------------
def test_fast_ica_recovers_independent_sources():
    rng = np.random.default_rng(0)
    s = rng.laplace(size=(4000, 3))
    x = s @ rng.normal(size=(3, 3))
    basis = ica_basis(torch.tensor(x, dtype=torch.float32))
    rec = basis.encode(torch.tensor(x, dtype=torch.float32)).numpy()
    corr = np.abs(np.corrcoef(rec.T, s.T)[:3, 3:])
    assert (corr.max(axis=1) > 0.95).all()
    acts = basis.activations(torch.tensor(x, dtype=torch.float32))
    assert acts.shape == (4000, 3) and (acts >= 0).all()


def test_pca_basis_orders_by_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 4, generator=g) * torch.tensor([5.0, 2.0, 1.0, 0.1])
    basis = pca_basis(x)
    proj = torch.stack([(x - x.mean(0)) @ d for d in torch.eye(4)], 1)
    acts = basis.activations(x)
    assert acts[:, 0].var() > acts[:, 1].var() > acts[:, 3].var()
    assert proj.shape == (2000, 4)
    with pytest.raises(sc.ConfigError, match="out of range"):
        basis.activations(x, [4])


def test_bootstrap_ci_brackets_the_mean():
    lo, hi = bootstrap_ci([0.1, 0.2, 0.3, 0.4, 0.5] * 4)
    assert lo < 0.3 < hi and hi - lo < 0.2


# -- universality ---------------------------------------------------------------------------
def _sae(d_sae=128, seed=0, hook="resid.1"):
    return sc.SAE.random(sc.SAEConfig("topk", 64, d_sae, k=8, hook=hook), seed=seed)


def test_same_sae_scores_mmcs_one():
    a = _sae()
    f = torch.relu(torch.randn(500, 128, generator=torch.Generator().manual_seed(1)))
    res = compare_saes(a, a, f, f)
    assert torch.allclose(res.mmcs, torch.ones(128), atol=1e-5)
    assert (res.mmcs_index == torch.arange(128)).all()
    s = res.summary()
    assert s["mmcs"]["share_above"]["0.9"] == 1.0
    assert s["activation_correlation"]["mean"] == pytest.approx(1.0, abs=1e-5)
    other = compare_saes(a, _sae(seed=5))
    assert other.summary()["mmcs"]["mean"] < 0.6  # unrelated random SAEs: near chance
    assert other.summary()["mmcs"]["mean"] == pytest.approx(other.chance_mmcs, abs=0.1)


def test_max_correlation_finds_permuted_copy():
    g = torch.Generator().manual_seed(0)
    fa = torch.relu(torch.randn(300, 10, generator=g))
    perm = torch.randperm(10, generator=g)
    fb = fa[:, perm] * 3.0
    v, idx, alive = max_correlation(fa, fb)
    assert torch.allclose(v, torch.ones(10), atol=1e-5)
    assert (perm[idx] == torch.arange(10)).all()


def test_compare_saes_cli(tmp_path, tiny_dir, capsys):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    sc.SAESet({"resid.1": _sae()}).save(a_dir)
    sc.SAESet({"resid.1": _sae(256, 3)}).save(b_dir)
    out = tmp_path / "cmp"
    assert main(["compare-saes", str(a_dir), str(a_dir), "--out", str(out), "--model",
                 str(tiny_dir("llama")), "--windows", "4", "--quiet"]) == 0
    result = json.loads((out / "compare.json").read_text())
    pair = result["pairs"][0]
    assert pair["mmcs"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert pair["activation_correlation"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert (out / "mmcs_resid.1__resid.1.svg").read_text().startswith("<svg")
    assert (out / "matches_resid.1__resid.1.csv").read_text().count("\n") == 129
    # different sizes, decoder only
    assert main(["compare-saes", str(a_dir), str(b_dir), "--out", str(tmp_path / "c2"),
                 "--no-activations"]) == 0
    pair = json.loads((tmp_path / "c2" / "compare.json").read_text())["pairs"][0]
    assert pair["d_sae_b"] == 256 and pair["mmcs"]["mean"] < 0.9
    capsys.readouterr()
    c_dir = tmp_path / "c"
    sc.SAESet({"resid.2": sc.SAE.random(sc.SAEConfig("topk", 32, 64, k=4, hook="resid.2"))}).save(c_dir)
    assert main(["compare-saes", str(a_dir), str(c_dir), "--out", str(tmp_path / "c3"),
                 "--no-activations"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saecircuits compare-saes: error:") and "\n" not in err


# -- explain end to end -----------------------------------------------------------------------
@pytest.fixture
def tiny_saes(tmp_path):
    folder = tmp_path / "saes"
    sc.SAESet({"resid.1": _sae()}).save(folder)
    return folder


def test_explain_cli_bases_resume_and_explanations(stub, tiny, tiny_dir, tiny_saes, tmp_path,
                                                  capsys):
    out = tmp_path / "explain"
    args = ["explain", "--saes", str(tiny_saes), "--top", "2", "--bases", "sae,neurons,pca,ica",
            "--out", str(out), "--model", str(tiny_dir("llama")), "--backend", "endpoint",
            "--base-url", stub.url, "--explainer-model", "stub", "--windows", "24",
            "--context", "16", "--n-top", "4", "--n-random", "2", "--ica-components", "16",
            "--quiet", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["summary"]) == {"sae", "neurons", "pca", "ica"}
    assert all(s["n"] == 2 for s in result["summary"].values())
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 8 and all(-1 <= r["score"] <= 1 for r in rows)
    assert {r["key"] for r in rows if r["basis"] == "pca"} <= {f"resid.1:pca{i}" for i in range(64)}
    labels = load_explanations(out)
    assert len(labels) == 2 and all(k.startswith("resid.1:") and v == "the word 'cat'"
                                    for k, v in labels.items())
    assert (out / "results.csv").read_text().count("\n") == 9
    assert "<svg" in (out / "scores.svg").read_text()
    assert (out / "bases.safetensors").is_file()  # fitted PCA/ICA reused by a resumed run
    n = len(stub.requests)
    # interrupted run: drop the last two scored units from the log; the rerun redoes only those,
    # from the cache
    log = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(log[:-2]) + "\n{\"cut")
    assert main(args) == 0
    capsys.readouterr()
    assert len(stub.requests) == n
    assert json.loads((out / "results.json").read_text()) == rows
    # a spent time budget starts no unit; the run is marked incomplete and a rerun continues
    from saecircuits.interp import ExcerptConfig, ExplainConfig, run_explain

    res = run_explain(*tiny, sc.SAESet.load(tiny_saes), ["def f(x):\n    return x + 1\n" * 40],
                      _endpoint(stub), ExplainConfig(hooks=["resid.1"], top=2, windows=16,
                                                     context=16, excerpts=ExcerptConfig(n_top=4)),
                      tmp_path / "budget",
                      progress=False, log=lambda m: None, time_budget=0.0)
    assert res["n_units"] == 0 and res["complete"] is False
    # other settings in the same --out are refused
    assert main(args[:-2] + ["--n-top", "6", "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_explain_bad_inputs(stub, tiny_dir, tiny_saes, tmp_path, capsys):
    import pydoc_data.topics

    corpus = tmp_path / "corpus.txt"  # explain reads its corpus before these checks: keep it small
    corpus.write_text("\n\n".join(pydoc_data.topics.topics[k] for k in ("assert", "if", "while", "for")))
    base = ["explain", "--saes", str(tiny_saes), "--model", str(tiny_dir("llama")),
            "--backend", "endpoint", "--base-url", stub.url, "--explainer-model", "stub",
            "--corpus", str(corpus), "--windows", "8", "--context", "16", "--quiet"]
    cases = [
        (["--features", "resid.1:999", "--out", str(tmp_path / "o1")], "out of range"),
        (["--features", "resid.1:3", "--bases", "pca", "--out", str(tmp_path / "o2")],
         "--features picks SAE features only"),
        (["--top", "2", "--bases", "fourier", "--out", str(tmp_path / "o3")], "unknown basis"),
    ]
    for extra, msg in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("saecircuits explain: error:") and msg in err and "\n" not in err
    assert main(["explain", "--saes", str(tiny_saes), "--model", str(tiny_dir("llama")),
                 "--backend", "endpoint", "--base-url", "http://127.0.0.1:9/v1",
                 "--explainer-model", "x", "--retries", "0", "--features", "resid.1:3",
                 "--corpus", str(corpus), "--windows", "8", "--context", "16", "--quiet",
                 "--out", str(tmp_path / "o4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unreachable" in err and "\n" not in err


def test_load_explanations_rejects_bad_files(tmp_path):
    (tmp_path / "e.json").write_text('{"resid.1:3": 5}')
    with pytest.raises(sc.SaecircuitsError, match="must map"):
        load_explanations(tmp_path / "e.json")
    with pytest.raises(sc.SaecircuitsError, match="no explanations"):
        load_explanations(tmp_path / "missing.json")
