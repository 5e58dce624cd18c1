"""`benchmarks/learning.py --quick`: the TreeRPO-vs-GRPO comparison runs end to end (issue 9).

One run of the script's CI mode (tiny-random model, two steps), written to a temporary directory so the
committed results are never touched; the tests then check the properties the comparison rests on: both arms
stop at the first step that reaches the same unique-token budget, start from the same SFT checkpoint and the
same prompts, and report curves, rewards and tokens consistent with their own per-step records.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    base = tmp_path_factory.mktemp("learning")
    out, work = base / "out", base / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--quick",
                           "--sft-examples", "6", "--out-dir", str(out), "--work-dir", str(work)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"report": json.loads((out / "learning.json").read_text()), "out": out, "work": work,
            "stdout": proc.stdout}


def test_both_arms_stop_at_the_first_step_that_reaches_the_budget(quick):
    report = quick["report"]
    budget = report["budget_unique_tokens"]
    assert set(report["arms"]) == {"treerpo", "grpo"}
    for name, arm in report["arms"].items():
        per_step = arm["tokens_unique_per_step"]
        assert len(per_step) == arm["steps"] == len(arm["reward_mean_per_step"]), name
        assert sum(per_step) == arm["tokens_unique"], name
        assert sum(per_step[:-1]) < budget <= arm["tokens_unique"], name


def test_arms_share_the_sft_checkpoint_prompts_and_optimizer(quick):
    configs = {name: yaml.safe_load((quick["work"] / name / "config.yaml").read_text()) for name in ("treerpo", "grpo")}
    tree, flat = configs["treerpo"], configs["grpo"]
    assert tree["tree"]["mode"] == "tree" and flat["tree"]["mode"] == "flat"
    assert tree["model"]["name"] == flat["model"]["name"]
    assert Path(tree["model"]["name"]).is_relative_to(quick["work"])  # the SFT warm-up this run made
    assert tree["sft"]["num_examples"] == flat["sft"]["num_examples"] == 0
    # RL prompts begin right after the SFT ones, in the same seeded order, for both arms
    assert tree["task"] == flat["task"] and tree["task"]["offset"] == quick["report"]["sft_examples"] == 6
    assert tree["optim"] == flat["optim"] and tree["train"] == flat["train"] and tree["run"]["seed"] == flat["run"]["seed"]
    arms = quick["report"]["arms"]
    assert arms["treerpo"]["initial_eval_accuracy"] == arms["grpo"]["initial_eval_accuracy"]


def test_eval_curve_runs_from_the_start_to_the_final_tokens(quick):
    report = quick["report"]
    for name, arm in report["arms"].items():
        curve = arm["eval_curve"]
        assert curve[0]["tokens_unique"] == 0 and curve[0]["step"] == 0, name
        assert curve[-1]["tokens_unique"] == arm["tokens_unique"] and curve[-1]["step"] == arm["steps"], name
        assert [p["step"] for p in curve] == sorted({p["step"] for p in curve}), name
        assert all(p["n"] == report["eval_n"] == 4 for p in curve), name
        assert arm["initial_eval_accuracy"] == curve[0]["accuracy"], name
        assert arm["final_eval_accuracy"] == curve[-1]["accuracy"], name
    # the quick tree arm needs two steps, so its first step crosses the budget/2 mark: a mid-run evaluation
    assert len(report["arms"]["treerpo"]["eval_curve"]) == 3


def test_path_sum_counts_shared_prefixes_once_per_path(quick):
    arms = quick["report"]["arms"]
    # flat samples share nothing; tree paths re-read their ancestors' tokens (none when a tree only split at
    # the root, so >=)
    assert arms["grpo"]["tokens_path_sum"] == arms["grpo"]["tokens_unique"]
    assert arms["treerpo"]["tokens_path_sum"] >= arms["treerpo"]["tokens_unique"]
    # a flat group is n_flat samples per prompt (4 in the quick mode); a tree has at least the forced split's 2
    assert set(arms["grpo"]["leaves_per_prompt_per_step"]) == {4}
    assert all(x >= 2 for x in arms["treerpo"]["leaves_per_prompt_per_step"])


def test_writes_plot_and_ends_with_the_table_and_no_checkpoints(quick):
    assert (quick["out"] / "learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = quick["stdout"].strip().splitlines()
    assert lines[-3].split()[:2] == ["arm", "steps"]
    assert [line.split()[0] for line in lines[-2:]] == ["treerpo", "grpo"]
    assert not list(quick["work"].glob("*/checkpoint-*"))


def test_tuning_run_reuses_the_warm_up_and_applies_overrides(quick, tmp_path):
    """`--sft-dir` starts from an earlier warm-up without training a new one, `--arms` runs a subset, and a
    `--set` override reaches the arm's config and shows in what it measured."""
    sft_dir = quick["work"] / "sft-run" / "sft"
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--quick",
                           "--sft-examples", "6", "--sft-dir", str(sft_dir), "--arms", "treerpo",
                           "--set", "tree.max_leaves=2", "--out-dir", str(out), "--work-dir", str(work)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "learning.json").read_text())
    assert set(report["arms"]) == {"treerpo"}
    assert report["settings"]["set"] == ["tree.max_leaves=2"] and report["settings"]["sft_dir_reused"] == str(sft_dir)
    assert not (work / "sft-run").exists()
    config = yaml.safe_load((work / "treerpo" / "config.yaml").read_text())
    assert config["model"]["name"] == str(sft_dir.resolve()) and config["tree"]["max_leaves"] == 2
    assert config["task"]["offset"] == 6
    leaves = report["arms"]["treerpo"]["leaves_per_prompt_per_step"]
    assert len(leaves) == report["arms"]["treerpo"]["steps"] and all(1 <= x <= 2 for x in leaves)


def test_bad_arm_name_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--quick", "--arms", "ppo",
                           "--out-dir", str(tmp_path), "--work-dir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "--arms takes a comma-separated subset" in proc.stderr
