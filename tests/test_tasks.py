import json

import pytest
import torch

from saecircuits.errors import TaskError
from saecircuits.tasks import load_jsonl, make_task, task_accuracy
from saecircuits.tasks.base import n_tokens
from saecircuits.tasks.ioi import single_token_names
from saecircuits.tasks.parens import closing_ids


@pytest.fixture(scope="module", params=["tiny_tok", pytest.param("smol", marks=pytest.mark.slow)])
def tok(request):
    """The generators run on the tiny tokenizer (fast) and on SmolLM2's (slow)."""
    got = request.getfixturevalue(request.param)
    return got[1] if request.param == "smol" else got


def test_ioi_generator(tok):
    assert len(single_token_names(tok)) >= 50
    t = make_task(tok, "ioi", n=12, seed=3)
    assert t.clean == make_task(tok, "ioi", n=12, seed=3).clean
    assert t.clean != make_task(tok, "ioi", n=12, seed=4).clean
    for c, p, io, s in zip(t.clean, t.patch, t.clean_ids.tolist(), t.patch_ids.tolist()):
        assert n_tokens(tok, c) == n_tokens(tok, p) and c != p
        io_name, s_name = tok.decode([io]).strip(), tok.decode([s]).strip()
        assert c.endswith(" to") and c.count(s_name) == 2 and c.count(io_name) == 1
        assert p.count(io_name) == 2 and p.count(s_name) == 1      # the answer flips
    orders = {c.index(tok.decode([io]).strip()) < c.index(tok.decode([s]).strip())
              for c, io, s in zip(t.clean, t.clean_ids.tolist(), t.patch_ids.tolist())}
    assert orders == {True, False}                                 # ABBA and BABA


def test_parens_and_sva_generators(tok):
    group = {tok.decode([i]) for i in closing_ids(tok)}
    assert {")", "))", ")."} <= group and all(g.startswith(")") for g in group)
    p = make_task(tok, "parens", n=10)
    assert p.metric_kind == "group_vs_rest"
    assert any("(" in c and "=" in c for c in p.clean) and any(c[0].isupper() for c in p.clean)
    for task in (p, make_task(tok, "sva", n=10)):
        assert all(n_tokens(tok, c) == n_tokens(tok, q) for c, q in zip(task.clean, task.patch))
    logits = torch.randn(10, 3, len(tok))
    ids = torch.tensor(p.group_ids)
    mask = torch.zeros(len(tok), dtype=torch.bool)
    mask[ids] = True
    last = logits[:, -1]
    want = torch.logsumexp(last[:, ids], -1) - last[:, ~mask].max(-1).values
    torch.testing.assert_close(p.metric(logits), want)


def _write(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_jsonl_loading_and_bad_inputs(tok, tmp_path):
    good = {"clean_prefix": "When Mary and John went out, John gave it to",
            "patch_prefix": "When Mary and John went out, Mary gave it to",
            "clean_answer": " Mary", "patch_answer": " John"}
    t = load_jsonl(tok, _write(tmp_path / "ok.jsonl", [good, good]))
    assert len(t) == 2 and t.clean_ids[0] == tok.encode(" Mary")[0]
    logits = torch.zeros(2, 1, len(tok))
    logits[:, 0, t.clean_ids[0]] = 2.0
    assert t.metric(logits).tolist() == [2.0, 2.0]
    nopatch = load_jsonl(tok, _write(tmp_path / "np.jsonl", [dict(good, patch_prefix=None)]))
    assert nopatch.patch is None
    bad_len = dict(good, patch_prefix="When Mary and John went out, Mary gave it back to")
    with pytest.raises(TaskError, match="line 2.*equal"):
        load_jsonl(tok, _write(tmp_path / "len.jsonl", [good, bad_len]))
    with pytest.raises(TaskError, match="line 1.*single tokens"):
        load_jsonl(tok, _write(tmp_path / "multi.jsonl", [dict(good, clean_answer=" Maryanne Smith")]))
    with pytest.raises(TaskError, match="null on some"):
        load_jsonl(tok, _write(tmp_path / "mix.jsonl", [good, dict(good, patch_prefix=None)]))
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(TaskError, match="broken.jsonl line 2"):
        load_jsonl(tok, tmp_path / "broken.jsonl")
    with pytest.raises(TaskError, match="unknown task"):
        make_task(tok, "nonsense")
    with pytest.raises(TaskError, match="not finite"):
        t.metric(torch.full((2, 1, len(tok)), float("nan")))


@pytest.mark.slow
def test_builtin_tasks_accuracy_on_smollm2(smol):
    model, tok = smol
    for name in ("ioi", "parens"):
        acc = task_accuracy(model, tok, make_task(tok, name, n=24, seed=1))
        assert acc["accuracy"] >= 0.8, acc
        assert acc["mean_metric"] > 0 > acc["patch_mean_metric"], acc
