"""Real 2-process DeepSpeed (ZeRO-2) on CPU through `accelerate launch` and an accelerate config file, as a
user runs it. Ranks grow trees of different lengths and train on different numbers of packs in one step; under
ZeRO-2, which reduces gradients inside every backward, that would pair the reductions up wrongly (gloo aborts
with "collective mismatch"). `backward_then_sync` moves the ranks in lockstep, and one optimizer step must
then equal, parameter for parameter, the plain computation: mean gradient over ranks, clipped, AdamW.

accelerate has no CPU path for DeepSpeed; `tests/deepspeed_cpu.py` makes it pick gloo (see its docstring)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from treerpo_core.accel import configure_deepspeed
from treerpo_core.run_dir import read_metrics

SHIM = Path(__file__).with_name("deepspeed_cpu.py")
CONFIG = textwrap.dedent("""
    compute_environment: LOCAL_MACHINE
    distributed_type: DEEPSPEED
    deepspeed_config:
      zero_stage: 2
    mixed_precision: 'no'
    num_machines: 1
    num_processes: 2
    use_cpu: false
""")


def launch(tmp_path) -> list[str]:
    config = tmp_path / "deepspeed.yaml"
    config.write_text(CONFIG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_port", str(port), str(SHIM)]


def env():
    return {**os.environ, "TREERPO_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM.parent), os.environ.get("PYTHONPATH")]))}


PROBE = textwrap.dedent("""
    import copy, json, sys, torch
    import torch.distributed as dist
    from treerpo_core.accel import (backward_then_sync, configure_deepspeed, is_deepspeed, load_trainable,
                                    make_accelerator, make_optimizer)
    from treerpo_core.config import Config, LossConfig
    from treerpo_core.loss import PolicyLoss, accumulate_policy_gradient
    from uneven_work import uneven_trees  # tests/ is on PYTHONPATH

    LR, MAX_NORM = 1e-3, 0.05
    cfg = Config()
    cfg.set("model.name=tiny-random")
    acc = make_accelerator(cfg)
    model, tokenizer = load_trainable(cfg, acc)
    reference = copy.deepcopy(model)
    optimizer, scheduler = make_optimizer(model, lr=LR)
    configure_deepspeed(acc, max_grad_norm=MAX_NORM, micro_batch=1)
    engine, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    assert is_deepspeed(engine) and engine.zero_optimization_stage() == 2
    rank = acc.process_index

    # rollout: the ranks grow different numbers of trees of different lengths (uneven forwards)
    engine.eval()
    trees = uneven_trees(acc.unwrap_model(engine), tokenizer, rank)

    # one training step, small packs so the ranks run different numbers of backward passes
    engine.train()
    loss_fn = PolicyLoss(LossConfig())
    kwargs = dict(temperature=0.6, max_packed_tokens=80)
    stats = backward_then_sync(acc, engine, lambda backward: accumulate_policy_gradient(
        engine, trees, loss_fn, backward=backward, **kwargs))
    norm = float(acc.clip_grad_norm_(engine.parameters(), MAX_NORM))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)

    # the same step by hand: this rank's gradient, averaged over ranks, clipped, AdamW
    reference.train()
    accumulate_policy_gradient(reference, trees, loss_fn, **kwargs)
    moved = False
    for q in reference.parameters():
        local = q.grad.clone()
        dist.all_reduce(q.grad)
        q.grad /= dist.get_world_size()
        moved = moved or not torch.allclose(local, q.grad)
    expected_norm = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), MAX_NORM))
    torch.optim.AdamW(reference.parameters(), lr=LR, weight_decay=0.0).step()
    worst = max(float((p - q).abs().max()) for p, q in zip(acc.unwrap_model(engine).parameters(), reference.parameters()))
    with open(f"{sys.argv[1]}/rank-{rank}.json", "w") as f:
        json.dump({"rank": rank, "packs": stats["packs"], "worst": worst, "moved": moved, "norm": norm,
                   "expected_norm": expected_norm}, f)
""")


def test_zero2_ranks_with_uneven_work_take_the_plain_optimizer_step(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    result = subprocess.run([*launch(tmp_path), str(probe), str(tmp_path)], capture_output=True, text=True,
                            timeout=600, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["packs"] < reports[1]["packs"]  # the uneven work that plain ZeRO-2 pairs up wrongly
    for r in reports:
        assert r["moved"]  # the ranks' gradients differ, so the mean is a real reduction
        assert r["expected_norm"] > 0.05  # clipping acted, so DeepSpeed's clip is part of what is compared
        assert r["norm"] == pytest.approx(r["expected_norm"], rel=1e-4)
        assert r["worst"] < 2e-6, r  # an AdamW step here moves parameters by ~1e-3


# `treerpo run` with a verifier whose verdicts vary (tiny-random never answers arithmetic right, so the
# task's own checker would give every leaf 0 and the run a zero gradient): PASS when the completion's length is
# even. `verify_batch` keeps it in-process, so it needs no import path in the verifier's workers.
RUN = textwrap.dedent("""
    import sys
    from treerpo_core.plugins import hookimpl, plugin_registered
    from treerpo_core.types import Verdict, VerifyResult
    from treerpo_cli.main import cli

    class Parity:
        def verify(self, completion, reference, **metadata):
            return VerifyResult(Verdict.PASS if len(completion) % 2 == 0 else Verdict.FAIL)

        def verify_batch(self, items):
            return [self.verify(**item) for item in items]

    class Plugin:
        @hookimpl
        def treerpo_register_verifiers(self, register):
            register("parity", Parity)

    with plugin_registered(Plugin()):
        cli.main(args=sys.argv[1:], prog_name="treerpo")
""")


def test_two_process_zero2_run_trains_and_resumes_with_its_optimizer_state(tmp_path):
    """Two steps, then `--resume` for a third, must end on the same weights as three steps in one go: the
    third AdamW step depends on the moments DeepSpeed saved in its own checkpoint format."""
    from safetensors.torch import load_file

    script = tmp_path / "run.py"
    script.write_text(RUN)
    sets = ["task.options.train_size=40", "task.options.test_size=4", "run.eval_limit=4", "eval.max_new_tokens=8",
            "sampling.max_new_tokens=16", "train.prompts_per_step=2", "run.save_every=1", "optim.lr=1e-3",
            "sft.num_examples=8", "sft.batch_size=2"]  # the warm-up, then a second model prepared for RL

    def run(out, *args):
        cmd = [*launch(tmp_path), str(script), "run", "--task", "arithmetic", "--verifier", "parity", "--model",
               "tiny-random", "--output-dir", str(out), "--no-progress", *[a for s in sets for a in ("--set", s)],
               *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env())
        assert result.returncode == 0, result.stderr[-3000:]

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    run(resumed, "--max-steps", "2")
    optimizer_shards = list((resumed / "checkpoint-2" / "trainer_state").rglob("*optim_states.pt"))
    assert len(optimizer_shards) == 2, optimizer_shards  # ZeRO-2: one optimizer shard per rank, DeepSpeed's format
    run(resumed, "--max-steps", "3", "--resume")
    run(straight, "--max-steps", "3")
    rows = read_metrics(resumed / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["prompts"] == 4 for r in rows)
    assert all(0 < r["reward_mean"] < 1 and r["grad_norm"] > 0 for r in rows), rows  # it trained on real signal
    a, b = (load_file(out / "checkpoint-3" / "model.safetensors") for out in (resumed, straight))
    initial = load_file(resumed / "checkpoint-1" / "model.safetensors")
    assert max(float((a[k] - initial[k]).abs().max()) for k in a) > 1e-4  # the weights did move
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def _accelerator(config: dict):
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))


def test_configure_deepspeed_fills_autos_and_refuses_what_would_train_wrongly():
    config = {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": "auto",
              "train_micro_batch_size_per_gpu": "auto"}
    configure_deepspeed(_accelerator(config), max_grad_norm=0.5, micro_batch=4)
    assert config["gradient_accumulation_steps"] == 1 and config["gradient_clipping"] == 0.5
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["zero_allow_untested_optimizer"] is True
    with pytest.raises(RuntimeError, match="ZeRO-3 is not supported.*ZeRO-2"):
        configure_deepspeed(_accelerator({"zero_optimization": {"stage": 3}}), max_grad_norm=1.0, micro_batch=1)
    with pytest.raises(RuntimeError, match="gradient_accumulation_steps=4.*train.grad_accumulation"):
        configure_deepspeed(_accelerator({"gradient_accumulation_steps": 4}), max_grad_norm=1.0, micro_batch=1)
    with pytest.raises(RuntimeError, match="gradient_clipping=2.0.*optim.max_grad_norm"):
        configure_deepspeed(_accelerator({"gradient_clipping": 2.0}), max_grad_norm=1.0, micro_batch=1)
    configure_deepspeed(SimpleNamespace(state=SimpleNamespace()), max_grad_norm=1.0, micro_batch=1)  # no DeepSpeed
