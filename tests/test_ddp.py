"""Training under torchrun (2 CPU processes, gloo): one update on all ranks, rank 0 writes."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

from saecircuits.sae import SAESet
from helpers import subprocess_env

SCRIPT = textwrap.dedent('''
    import sys, torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from saecircuits import load_model
    from trainers import TrainConfig, train_saes

    torch.set_num_threads(1)
    model_dir, out, arch = sys.argv[1:4]
    model, tok = load_model(model_dir, device="cpu")
    texts = [f"Document {i}: the quick brown fox jumps over the lazy dog {i} times. " * 6
             for i in range(60)]
    cfg = TrainConfig(hooks=["resid.0", "resid.2"], architecture=arch, k=4, expansion=2,
                      tokens=2048, context=32, batch=128, eval_tokens=0, out=out,
                      progress=False, windows_per_block=8)
    saes = train_saes(model, tok, cfg, corpus=texts)
    rank = dist.get_rank()
    save_file({f"{h}.{k}": v.contiguous() for h, s in saes.items() for k, v in s.state_dict().items()},
              f"{out}.rank{rank}.safetensors")
    dist.destroy_process_group()
''')


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_torchrun_two_ranks_train_identical_saes(tiny_dir, tmp_path, arch):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "saes"
    env = subprocess_env(OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script), str(tiny_dir("llama")), str(out), arch],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [load_file(f"{out}.rank{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for key in ranks[0]:
        assert ranks[0][key].equal(ranks[1][key]), key   # every rank applied the same updates
    saved = SAESet.load(out)                              # rank 0 wrote the set
    assert set(saved) == {"resid.0", "resid.2"}
    assert saved["resid.2"].W_dec.equal(ranks[0]["resid.2.W_dec"])
    config = json.loads((out / "train_config.json").read_text())
    assert config["steps"] == 2048 // (128 * 2)          # the token budget is shared by the ranks
