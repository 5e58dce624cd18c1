"""Real 2-process FSDP2 on CPU (gloo), launched with torchrun: the model sharded with `fully_shard` per decoder
layer and at the root (the layout accelerate's FSDP2 plugin gives a transformers model). Ranks grow trees of
different lengths and train on different numbers of packs in one step, which under FSDP2's per-forward
all-gathers would hang; `full_parameters` and `backward_then_sync` make them finish, with the gradient each
rank ends up with equal to the mean of the unsharded model's per-rank gradients.

accelerate itself only shards with FSDP on GPUs (on a CPU it falls back to DDP), so this drives `fully_shard`
directly; the accelerate wiring (`fsdp_version: 2`) runs only where there is a GPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from treerpo_core.accel import check_distributed

PROBE = textwrap.dedent("""
    import copy, json, sys, torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from treerpo_core.accel import backward_then_sync, full_parameters, load_trainable, make_accelerator
    from treerpo_core.config import Config, LossConfig
    from treerpo_core.loss import PolicyLoss, accumulate_policy_gradient
    from uneven_work import uneven_trees  # tests/ is on PYTHONPATH

    cfg = Config()
    cfg.set("model.name=tiny-random")
    acc = make_accelerator(cfg)
    model, tokenizer = load_trainable(cfg, acc)  # tree attention on, as the trainer has it
    reference = copy.deepcopy(model)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    rank = acc.process_index
    assert type(model.lm_head.weight).__name__ == "DTensor"

    # rollout: the ranks grow different numbers of trees of different lengths (uneven forwards)
    model.eval()
    with full_parameters(model):
        trees = uneven_trees(model, tokenizer, rank)

    # training: small packs so the ranks run different numbers of forward/backward passes
    model.train()
    reference.train()
    loss_fn = PolicyLoss(LossConfig())
    kwargs = dict(temperature=0.6, max_packed_tokens=80)
    stats = backward_then_sync(acc, model, lambda backward: accumulate_policy_gradient(model, trees, loss_fn,
                                                                                      backward=backward, **kwargs))
    accumulate_policy_gradient(reference, trees, loss_fn, **kwargs)
    worst, moved = 0.0, False
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        local = q.grad.clone()
        expected = local.clone()
        dist.all_reduce(expected)
        expected /= dist.get_world_size()
        worst = max(worst, float((p.grad.full_tensor() - expected).abs().max()))
        moved = moved or not torch.allclose(local, expected)
    with open(f"{sys.argv[1]}/rank-{rank}.json", "w") as f:
        json.dump({"rank": rank, "packs": stats["packs"], "leaves": sum(len(t.leaves()) for t in trees),
                   "worst": worst, "moved": moved}, f)
""")


def test_fsdp2_ranks_with_uneven_work_finish_with_the_mean_gradient(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(probe), str(tmp_path)]
    env = {**os.environ, "TREERPO_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["packs"] < reports[1]["packs"]  # the uneven work that would hang plain FSDP2
    for r in reports:
        assert r["moved"]  # the ranks' gradients differ, so the mean is a real reduction
        assert r["worst"] < 1e-5, r


class _Accelerator:
    def __init__(self, kind):
        from accelerate.utils import DistributedType

        self.distributed_type = getattr(DistributedType, kind)


def test_fsdp1_is_refused_with_the_way_out():
    import torch

    with pytest.raises(RuntimeError, match="fsdp_version: 2"):
        check_distributed(_Accelerator("FSDP"), torch.nn.Linear(2, 2))
    check_distributed(_Accelerator("MULTI_CPU"), torch.nn.Linear(2, 2))  # DDP passes
