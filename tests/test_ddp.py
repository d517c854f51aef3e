"""Training under torchrun (2 CPU processes, gloo): one update on all ranks, rank 0 writes."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from safetensors.torch import load_file

from saecircuits.sae import SAESet
from helpers import subprocess_env

ARCHS = ("topk", "relu")
SCRIPT = textwrap.dedent('''
    import sys, torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from saecircuits import load_model
    from trainers import TrainConfig, train_saes

    torch.set_num_threads(1)
    model_dir, out, archs = sys.argv[1:4]
    model, tok = load_model(model_dir, device="cpu")
    texts = [f"Document {i}: the quick brown fox jumps over the lazy dog {i} times. " * 6
             for i in range(60)]
    for arch in archs.split(","):  # one launch for every architecture: start-up is most of the cost
        cfg = TrainConfig(hooks=["resid.0", "resid.2"], architecture=arch, k=4, expansion=2,
                          tokens=2048, context=32, batch=128, eval_tokens=0, out=f"{out}-{arch}",
                          progress=False, windows_per_block=8)
        saes = train_saes(model, tok, cfg, corpus=texts)
        rank = dist.get_rank()
        save_file({f"{h}.{k}": v.contiguous() for h, s in saes.items()
                   for k, v in s.state_dict().items()}, f"{out}-{arch}.rank{rank}.safetensors")
    dist.destroy_process_group()
''')


def test_torchrun_two_ranks_train_identical_saes(tiny_dir, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "saes"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script), str(tiny_dir("llama")), str(out),
                           ",".join(ARCHS)],
                          capture_output=True, text=True, env=subprocess_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for arch in ARCHS:
        folder = tmp_path / f"saes-{arch}"
        ranks = [load_file(f"{folder}.rank{r}.safetensors") for r in (0, 1)]
        assert ranks[0].keys() == ranks[1].keys() and ranks[0], arch
        for key in ranks[0]:
            assert ranks[0][key].equal(ranks[1][key]), (arch, key)  # every rank, the same updates
        saved = SAESet.load(folder)                                  # rank 0 wrote the set
        assert set(saved) == {"resid.0", "resid.2"} and saved["resid.2"].cfg.architecture == arch
        assert saved["resid.2"].W_dec.equal(ranks[0]["resid.2.W_dec"])
        config = json.loads((folder / "train_config.json").read_text())
        assert config["steps"] == 2048 // (128 * 2)          # the token budget is shared by the ranks
