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

import pytest

from treerpo_core.accel import check_distributed

PROBE = textwrap.dedent("""
    import copy, json, random, sys, torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from treerpo_core.accel import backward_then_sync, full_parameters, load_trainable, make_accelerator
    from treerpo_core.config import Config, LossConfig, SamplingConfig, TreeConfig
    from treerpo_core.loss import PolicyLoss, accumulate_policy_gradient
    from treerpo_core.rollout.engine import TreeEngine
    from treerpo_core.types import Example

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

    # rollout: rank 1 grows three trees of up to 24 tokens a path, rank 0 one of up to 8: unequal forwards
    prompts = ["What is 2 + 3?", "Count to five.", "Name a colour.", "Say hello."]
    examples = [Example(id=f"q{i}", prompt=[{"role": "user", "content": p}], reference="0")
                for i, p in enumerate(prompts)][:1 + 2 * rank]
    model.eval()
    with full_parameters(model):
        trees = TreeEngine(model, tokenizer, tree=TreeConfig(l_min=2, h_th=0.1, max_leaves=6, s_min=6),
                           sampling=SamplingConfig(max_new_tokens=8 + 16 * rank)).grow(examples, seed=rank)
    rng = random.Random(rank)
    for tree in trees:
        for node in tree.nodes[1:]:
            node.advantage = rng.choice([-0.5, 0.25, 0.75])

    # training: small packs so the ranks run different numbers of forward/backward passes
    model.train()
    reference.train()
    loss_fn = PolicyLoss(LossConfig())
    kwargs = dict(temperature=0.6, max_packed_tokens=80)
    stats = backward_then_sync(acc, model, lambda: accumulate_policy_gradient(model, trees, loss_fn,
                                                                             backward=acc.backward, **kwargs))
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
    env = {**os.environ, "TREERPO_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
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


def test_deepspeed_and_fsdp1_are_refused_with_the_way_out():
    import torch

    with pytest.raises(RuntimeError, match="DeepSpeed is not supported.*FSDP2"):
        check_distributed(_Accelerator("DEEPSPEED"), torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="fsdp_version: 2"):
        check_distributed(_Accelerator("FSDP"), torch.nn.Linear(2, 2))
    check_distributed(_Accelerator("MULTI_CPU"), torch.nn.Linear(2, 2))  # DDP passes
