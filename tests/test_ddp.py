"""Real 2-process DDP on CPU (gloo), launched with `accelerate launch`: ranks that run different numbers of
backward passes still end with the same, averaged gradients (no deadlock), and `treerpo run` trains with
each rank growing trees for its own prompts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

from treerpo_core.run_dir import read_metrics
from treerpo_core.types import Tree



def launch() -> list[str]:
    """`accelerate launch` for two processes; on a machine without GPUs they run DDP over gloo on the CPU
    (`--cpu` alone would start one process unless MPI is set up). A free port, so parallel runs don't clash."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


# rank r runs r + 1 backward passes: under plain DDP the extra one would wait forever for a partner
PROBE = textwrap.dedent("""
    import json, sys, torch
    from treerpo_core.accel import backward_then_sync, load_trainable, make_accelerator
    from treerpo_core.config import Config

    cfg = Config()
    cfg.set("model.name=tiny-random")
    acc = make_accelerator(cfg)
    model, _ = load_trainable(cfg, acc)
    ddp = acc.prepare(model)
    rank = acc.process_index
    inputs = [torch.tensor([[5 + rank + k, 9, 11]]) for k in range(rank + 1)]

    # the gradient this rank accumulates on its own (no DDP involved)
    model.zero_grad()
    for ids in inputs:
        model(input_ids=ids).logits.float().square().mean().backward()
    local = model.lm_head.weight.grad.clone()
    model.zero_grad()

    def run(backward):
        for ids in inputs:
            backward(ddp(input_ids=ids).logits.float().square().mean())
    backward_then_sync(acc, ddp, run)
    expected = acc.reduce(local, reduction="mean")
    got = model.lm_head.weight.grad
    ok = torch.allclose(got, expected, atol=1e-6) and not torch.allclose(local, expected)
    # one file per rank: two processes printing to one pipe can interleave their lines
    with open(f"{sys.argv[1]}/rank-{rank}.json", "w") as f:
        json.dump({"rank": rank, "ok": bool(ok)}, f)
""")


def env():
    return {**os.environ, "TREERPO_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}


def test_unequal_backward_counts_sync_to_the_mean_gradient(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    result = subprocess.run([*launch(), str(probe), str(tmp_path)], capture_output=True, text=True, timeout=600,
                            env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert reports == [{"rank": 0, "ok": True}, {"rank": 1, "ok": True}]


def test_two_process_run_splits_prompts_between_ranks(tmp_path):
    out = tmp_path / "ddp"
    sets = ["task.options.train_size=40", "task.options.test_size=4", "run.eval_limit=4", "eval.max_new_tokens=8",
            "sampling.max_new_tokens=16", "train.prompts_per_step=2", "run.dump_every=1", "optim.lr=1e-3"]
    cmd = [*launch(), "-m", "treerpo_cli.main", "run", "--task", "arithmetic", "--model", "tiny-random",
           "--max-steps", "2", "--output-dir", str(out), "--no-progress", *[a for s in sets for a in ("--set", s)]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]  # one writer: rank 0
    assert all(r["prompts"] == 4 for r in rows)  # 2 per rank, summed
    for step in (1, 2):
        ids = [Tree.from_json(line).prompt_id for line in (out / "trees" / f"step-{step}.jsonl").read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 4  # each rank grew trees for different prompts
    state = out / "checkpoint-2" / "trainer_state"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
    assert json.loads((out / "summary.json").read_text())["accuracy_final"]["n"] == 4  # both ranks' slices
