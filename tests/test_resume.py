"""Kill -9 a running `treerpo run`, then `--resume`: the same step numbering and data order as an uninterrupted
run would have, and no step twice in metrics.jsonl."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from treerpo_core.checkpoint import latest_checkpoint, read_state
from treerpo_core.config import Config
from treerpo_core.run_dir import read_metrics
from treerpo_core.trainer import Trainer, rank_slice
from treerpo_core.types import Tree

SETTINGS = ["task.options.train_size=40", "task.options.test_size=4", "run.max_steps=5", "run.save_every=2",
            "run.keep_last=5", "run.dump_every=1", "run.eval_limit=0", "sampling.max_new_tokens=16",
            "train.prompts_per_step=3", "optim.lr=1e-3"]


def command(out, *extra):
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return [sys.executable, "-m", "treerpo_cli.main", "run", "--task", "arithmetic", "--model", "tiny-random",
            "--output-dir", str(out), "--no-progress", *sets, *extra]


def test_kill_then_resume_continues_cleanly(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "TREERPO_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        # kill once a step past the first checkpoint has been logged, so the resumed run must cut it away
        while not any(r["step"] >= 3 for r in _rows(out)):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = latest_checkpoint(out)
    killed_at = read_state(ckpt)["step"]
    logged_before = max(r["step"] for r in _rows(out))
    assert logged_before > killed_at  # steps past the checkpoint were logged and must be redone

    resumed = subprocess.run(command(out, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {ckpt}" in resumed.stderr
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]

    # data order: step s (1-based) takes the prompts at position 3 * (s - 1) of the RL examples
    cfg = Config.load(None, SETTINGS + ["task.name=arithmetic", f"run.output_dir={tmp_path / 'x'}"])
    _, examples, _ = Trainer(cfg, progress=False).split_examples()
    for step in range(1, 6):
        dumped = [Tree.from_json(line) for line in (out / "trees" / f"step-{step}.jsonl").read_text().splitlines()]
        assert [t.prompt_id for t in dumped] == [e.id for e in rank_slice(examples, 3 * (step - 1), 3, 0)], step
        assert all(t.step == step for t in dumped)


def _rows(out):
    try:
        return read_metrics(out / "metrics.jsonl")
    except ValueError:  # a line being written right now
        return []
