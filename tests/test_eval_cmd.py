"""`treerpo eval` through click's CliRunner with tiny-random: report fields, the per-example JSONL, file
order under --limit, resumption, and the refusals (maj@K without answer extraction, unsandboxed code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from treerpo_cli.main import cli
from treerpo_core.data import read_data_file
from treerpo_core.plugins import get_registry

GSM8K_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "test.jsonl"
FAST = ["--model", "tiny-random", "--set", "eval.max_new_tokens=8", "--set", "eval.batch_size=8"]

needs_gsm8k_file = pytest.mark.skipif(not GSM8K_TEST.is_file(), reason=f"offline GSM8K copy not at {GSM8K_TEST}")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_evaluate.py: far faster on a small shared CPU
    yield
    torch.set_num_threads(before)


def run(args, cwd: Path):
    """Invoke `treerpo eval ARGS` in `cwd`; returns the click Result."""
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)
    finally:
        os.chdir(old)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_gsm8k_file
def test_gsm8k_greedy_report_and_examples_in_file_order(tmp_path):
    res = run(["--task", "gsm8k", "--mode", "greedy", "--limit", "3", "--data-file", str(GSM8K_TEST), *FAST], tmp_path)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval-gsm8k-greedy.json").read_text())  # the default --output
    assert (report["task"], report["model"], report["mode"], report["verifier"]) == ("gsm8k", "tiny-random", "greedy", "boxed")
    assert report["num_examples"] == 3 and report["num_samples"] == 3
    assert sum(report["verdicts"].values()) == 3 and set(report["verdicts"]) == {"PASS", "FAIL", "ERROR", "TIMEOUT"}
    lines = records(tmp_path / "eval-gsm8k-greedy.examples.jsonl")
    assert report["accuracy"] == pytest.approx(sum(r["score"] for r in lines) / 3)
    assert report["ci95"][0] <= report["accuracy"] <= report["ci95"][1]
    # --limit takes the first rows of the file, unshuffled
    task = get_registry().create("task", "gsm8k", {}, data_file=str(GSM8K_TEST))
    first = [ex.id for ex, _ in zip(task.examples("test"), range(3))]
    assert [r["id"] for r in lines] == first
    questions = [row["question"] for row in read_data_file(GSM8K_TEST)[:3]]
    prompts = [" ".join(m["content"] for m in ex.prompt) for ex, _ in zip(task.examples("test"), range(3))]
    assert [q in p for q, p in zip(questions, prompts)] == [True] * 3
    for r in lines:
        assert len(r["samples"]) == len(r["answers"]) == len(r["verdicts"]) == 1


@needs_gsm8k_file
def test_gsm8k_maj_at_k_report(tmp_path):
    out = tmp_path / "maj.json"
    res = run(["--task", "gsm8k", "--mode", "maj@3", "--limit", "2", "--data-file", str(GSM8K_TEST),
               "--output", str(out), *FAST], tmp_path)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["mode"] == "maj@3" and report["samples_per_example"] == 3 and report["num_samples"] == 6
    assert report["settings"]["temperature"] == 0.7 and report["settings"]["top_p"] == 0.8
    for r in records(tmp_path / "maj.examples.jsonl"):
        assert len(r["samples"]) == 3 and "majority_answer" in r and "majority_votes" in r


@needs_gsm8k_file
def test_rerun_with_the_same_output_skips_done_examples(tmp_path):
    args = ["--task", "gsm8k", "--mode", "greedy", "--data-file", str(GSM8K_TEST), "--output", "r.json", *FAST]
    assert run([*args, "--limit", "2"], tmp_path).exit_code == 0
    first = records(tmp_path / "r.examples.jsonl")
    res = run([*args, "--limit", "4"], tmp_path)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["resumed_examples"] == 2 and report["num_examples"] == 4
    lines = records(tmp_path / "r.examples.jsonl")
    assert lines[:2] == first  # the first two were kept, not regenerated
    assert len({r["id"] for r in lines}) == 4 == len(lines)


@needs_gsm8k_file
def test_rerun_in_another_mode_refuses_to_mix_results(tmp_path):
    args = ["--task", "gsm8k", "--data-file", str(GSM8K_TEST), "--output", "r.json", "--limit", "1", *FAST]
    assert run([*args, "--mode", "greedy"], tmp_path).exit_code == 0
    res = CliRunner().invoke(cli, ["eval", *args, "--mode", "pass@1", "--output", str(tmp_path / "r.json")])
    assert res.exit_code != 0
    assert "mode='greedy', not 'pass@1'" in res.output


@pytest.mark.sandbox
def test_humaneval_pass_at_k_through_the_sandbox(tmp_path):
    res = run(["--task", "humaneval", "--mode", "pass@2", "--samples", "3", "--limit", "2", "--output", "he.json",
               *FAST], tmp_path)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "he.json").read_text())
    assert (report["mode"], report["k"], report["verifier"]) == ("pass@2", 2, "unit-tests")
    assert report["num_samples"] == 6 and sum(report["verdicts"].values()) == 6
    for r in records(tmp_path / "he.examples.jsonl"):
        assert len(r["verdicts"]) == 3 and r["answers"] is None  # unit-tests extracts no answers
        assert r["num_correct"] == sum(v == "PASS" for v in r["verdicts"])


def test_humaneval_maj_at_k_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(cli, ["eval", "--task", "humaneval", "--mode", "maj@2", "--limit", "1",
                                   "--output", str(tmp_path / "x.json"), *FAST])
    assert res.exit_code == 1
    assert "verifier 'unit-tests' has no extract_answer" in res.output
    assert not (tmp_path / "x.json").exists()


def test_code_without_a_sandbox_needs_unsafe(tmp_path):
    res = CliRunner().invoke(cli, ["eval", "--task", "humaneval", "--limit", "1", "--set", "verifier.sandbox=local",
                                   "--output", str(tmp_path / "x.json"), *FAST])
    assert res.exit_code == 2 and "--unsafe" in res.output
