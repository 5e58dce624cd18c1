"""`treerpo run` through the CLI: the embedded demo recipe (shrunk to seconds), bad input reported cleanly,
a code task on the same trainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from treerpo_cli.main import cli
from treerpo_cli.run_cmd import demo_recipe
from treerpo_core.config import Config
from treerpo_core.run_dir import read_metrics
from treerpo_core.types import Tree

# the demo recipe, shrunk: the tiny model, 8 SFT examples, 2 RL steps, 4 held-out problems
SHRINK = ["model.name=tiny-random", "sft.num_examples=8", "sft.epochs=1", "run.max_steps=2", "run.dump_every=1",
          "task.options.train_size=64", "task.options.test_size=4", "run.eval_limit=4", "eval.max_new_tokens=8",
          "sampling.max_new_tokens=24", "train.prompts_per_step=2"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_demo_recipe_is_installed_and_says_what_the_demo_is():
    cfg = Config.load(demo_recipe())
    assert (cfg.task.name, cfg.model.name, cfg.verifier.name) == ("arithmetic", "smollm2-135m", "boxed")
    assert cfg.sft.num_examples == 160 and cfg.run.eval_limit == 64


def test_shrunken_demo_runs_sft_then_rl_and_prints_the_summary(tmp_path):
    out = tmp_path / "demo"
    sets = [a for s in SHRINK for a in ("--set", s)]
    result = invoke("run", "--output-dir", out, "--no-progress", *sets)
    assert result.exit_code == 0, result.output
    assert "after SFT" in result.output and str(out / "checkpoint-2") in result.output
    assert json.loads((out / "sft" / "sft_complete.json").read_text())["examples"] == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy_start_label"] == "after SFT" and summary["accuracy_start"]["n"] == 4
    assert summary["accuracy_final"]["n"] == 4 and summary["steps"] == 2
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    # RL prompts come after the SFT examples in the shuffled order: never trained on twice
    from treerpo_core.trainer import Trainer

    cfg = Config.load(demo_recipe(), [s for s in SHRINK] + [f"run.output_dir={tmp_path / 'unused'}"])
    sft_examples, _, _ = Trainer(cfg, progress=False).split_examples()
    rl_ids = {Tree.from_json(line).prompt_id for step in (1, 2)
              for line in (out / "trees" / f"step-{step}.jsonl").read_text().splitlines()}
    assert len(rl_ids) == 4 and not rl_ids & {e.id for e in sft_examples}


def test_a_row_missing_fields_is_an_error_naming_the_row(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n" + json.dumps({"question": "2+2?"}) + "\n")
    result = CliRunner().invoke(cli, ["run", "--task", "gsm8k", "--model", "tiny-random", "--data-file", str(data),
                                      "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1
    assert "bad.jsonl" in result.output and "row 1" in result.output and "answer" in result.output  # rows count from 0
    assert "Traceback" not in result.output


def test_unknown_config_key_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--task", "arithmetic", "--set", "train.lr=1"])
    assert result.exit_code == 2 and "unknown config key 'train.lr'" in result.output


def test_code_task_runs_on_the_same_trainer(tmp_path):
    from treerpo_core.plugins import get_registry

    if "humaneval" not in get_registry().entries["task"]:
        pytest.skip("task humaneval is not registered yet")
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (.ci/setup_sandbox.sh installs it)")
    out = tmp_path / "he"
    result = invoke("run", "--task", "humaneval", "--verifier", "unit-tests", "--model", "tiny-random",
                    "--max-steps", "1", "--output-dir", out, "--no-progress", "--set", "sampling.max_new_tokens=16",
                    "--set", "run.eval_limit=0", "--set", "run.dump_every=1")
    assert result.exit_code == 0, result.output
    (row,) = read_metrics(out / "metrics.jsonl")
    assert row["verdict/error"] < 1.0  # the sandbox graded the programs instead of failing to run them
    assert (out / "checkpoint-1" / "config.json").is_file()


def test_paper_recipe_holds_the_papers_settings():
    cfg = Config.load(Path(demo_recipe()).with_name("paper-gsm8k.yaml"))
    assert cfg.model.name == "Qwen/Qwen2.5-Math-1.5B" and cfg.task.name == "numina-math"
    assert (cfg.sft.num_examples, cfg.task.offset, cfg.task.limit) == (5000, 0, 5000)  # disjoint 5k + 5k
    assert (cfg.tree.l_min, cfg.tree.h_th, cfg.tree.entropy_top, cfg.tree.max_depth) == (150, 1.0, 20, 7)
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.top_k) == (0.6, 0.85, 25)
    assert (cfg.loss.eps_low, cfg.optim.lr, cfg.train.ppo_epochs) == (0.2, 1e-6, 1)


def test_a_second_run_into_the_same_directory_must_say_resume(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    result = CliRunner().invoke(cli, ["run", "--task", "arithmetic", "--model", "tiny-random", "--output-dir", str(out)])
    assert result.exit_code == 1 and "--resume" in result.output
