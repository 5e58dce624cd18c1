"""`treerpo report`: reading a run directory (in progress, flat mode), the numbers each panel draws, and the
self-contained page. The synthetic run below has hand-chosen values; the expected numbers are worked out
in the comments next to each assertion."""

from __future__ import annotations

import json
import math
import re

import pytest
from click.testing import CliRunner

from treerpo_cli.main import cli
from treerpo_core.report import PANELS, ReportError, build_report, read_run
from treerpo_core.report.page import prompt_decoder, render_page, script_json, viewer_data
from treerpo_core.report.plots import (depth_fractions, error_rate_by_tree, leaves_of, mean_length_by_depth,
                                       moving_average, spread_steps)

INJECTION = "We add </script><b>bold</b><img src=x onerror=alert(1)> 3+4 = 7, so \\boxed{7}"


def node(id, parent, depth, kind, n_tokens, text, reward, advantage, verdict=None, split_entropy=None):
    return {"id": id, "parent": parent, "depth": depth, "kind": kind, "token_ids": list(range(100, 100 + n_tokens)),
            "text": text, "logprobs": [-0.5] * n_tokens, "split_entropy": split_entropy, "verdict": verdict,
            "reward": reward, "advantage": advantage}


def tree(step, prompt_id, nodes):
    return {"step": step, "prompt_id": prompt_id, "prompt_token_ids": [1, 2, 3], "reference": "7",
            "nodes": nodes, "info": {"stopped_by": "max_depth"}}


# Step 2, prompt p0: root -> {1 forced (splits at entropy 1.2345) -> {3 PASS, 4 FAIL}, 2 forced PASS}.
# Rewards: leaves 1, 0, 1; node 1 = mean(1, 0) = 0.5; root = mean(1, 0, 1) = 2/3.
# Advantages (reward minus mean over the sibling group): node 1: 0.5 - 0.75 = -0.25, node 2: +0.25,
# node 3: 1 - 0.5 = +0.5, node 4: -0.5. Completion lengths: node 3: 5 + 4 = 9, node 4: 5 + 3 = 8, node 2: 6.
TREE_A = tree(2, "p0", [
    node(0, None, 0, "root", 0, "", 2 / 3, 0.0),
    node(1, 0, 1, "forced", 5, "First, 3 + 4 =", 0.5, -0.25, split_entropy=1.2345),
    node(2, 0, 1, "forced", 6, INJECTION, 1.0, 0.25, verdict="PASS"),
    node(3, 1, 2, "entropy", 4, " 7, so the answer is \\boxed{7}", 1.0, 0.5, verdict="PASS"),
    node(4, 1, 2, "entropy", 3, " 8, so \\boxed{8}", 0.0, -0.5, verdict="FAIL"),
])
# Step 2, prompt p1: two leaves at depth 1, FAIL (2 tokens) and ERROR (3 tokens): error rate 1.
TREE_B = tree(2, "p1", [
    node(0, None, 0, "root", 0, "", 0.0, 0.0),
    node(1, 0, 1, "forced", 2, "No idea.", 0.0, 0.0, verdict="FAIL"),
    node(2, 0, 1, "forced", 3, "print(", 0.0, 0.0, verdict="ERROR"),
])
# Step 4, prompt p0: leaves 2 (d1, PASS, 4 tokens), 4 (d2, TIMEOUT, 2+1), 5 (d3, PASS, 2+2+3),
# 6 (d3, FAIL, 2+2+5), 7 (d2 coverage, PASS, 2+6). Error rate 2/5.
TREE_C = tree(4, "p0", [
    node(0, None, 0, "root", 0, "", 0.6, 0.0),
    node(1, 0, 1, "forced", 2, "So", 0.5, -0.25, split_entropy=1.5),
    node(2, 0, 1, "forced", 4, " it is \\boxed{7}", 1.0, 0.25, verdict="PASS"),
    node(3, 1, 2, "entropy", 2, " 3+4", 0.5, 0.0, split_entropy=1.1),
    node(4, 1, 2, "entropy", 1, "?", 0.0, -0.5, verdict="TIMEOUT"),
    node(5, 3, 3, "entropy", 3, "=7 \\boxed{7}", 1.0, 0.5, verdict="PASS"),
    node(6, 3, 3, "entropy", 5, "=8 \\boxed{8}", 0.0, -0.5, verdict="FAIL"),
    node(7, 1, 2, "coverage", 6, " three plus four \\boxed{7}", 1.0, 0.5, verdict="PASS"),
])

N_STEPS = 20


def reward_at(step: int) -> float:
    return (step % 5) / 4  # 0.25, 0.5, 0.75, 1.0, 0.0, 0.25, ...


def write_synthetic_run(run_dir, finished: bool = False):
    """A tree-mode run of 20 logged steps: NaN loss at step 3, no entropy at step 4, a truncated last
    metrics line and a truncated last tree line, as a run killed mid-write leaves them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("model:\n  name: tiny-random\ntree:\n  mode: tree\n  h_th: 1.0\n"
                                         "run:\n  output_dir: <runs & co>\n")
    rows = []
    for step in range(1, N_STEPS + 1):
        row = {"step": step, "loss": 0.1 * step, "reward_mean": reward_at(step), "tree/leaves": step + 1,
               "clip_ratio": 0.01 * step, "entropy": 1.0 - 0.01 * step, "splits/forced": 1, "splits/entropy": 2,
               "splits/coverage": 0, "time/rollout": 2.0, "time/verify": 0.5, "time/train": 1.0}
        if step == 3:
            row["loss"] = float("nan")
        if step == 4:
            del row["entropy"]
        rows.append(json.dumps(row))
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 21, "loss": 0.')
    trees = run_dir / "trees"
    trees.mkdir(exist_ok=True)
    (trees / "step-2.jsonl").write_text(json.dumps(TREE_A) + "\n" + json.dumps(TREE_B) + "\n")
    (trees / "step-4.jsonl").write_text(json.dumps(TREE_C) + "\n" + json.dumps(TREE_A)[:40])
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({"greedy_accuracy": 0.5, "steps": N_STEPS}))
    return run_dir


def write_flat_run(run_dir):
    """A flat-mode (GRPO) run: four `sample` leaves under the root, one logged step, no summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("tree:\n  mode: flat\n  n_flat: 4\n")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.2, "reward_mean": 0.5}) + "\n")
    (run_dir / "trees").mkdir(exist_ok=True)
    samples = [node(i, 0, 1, "sample", 3 + i, f"sample {i} \\boxed{{{i}}}", float(i % 2), float(i % 2) - 0.5,
                    verdict="PASS" if i % 2 else "FAIL") for i in range(1, 5)]
    (run_dir / "trees" / "step-1.jsonl").write_text(
        json.dumps(tree(1, "q0", [node(0, None, 0, "root", 0, "", 0.5, 0.0)] + samples)) + "\n")
    return run_dir


@pytest.fixture
def run_dir(tmp_path):
    return write_synthetic_run(tmp_path / "run")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The synthetic run's full report, built once: drawing ten PNGs is the slow part."""
    run_dir = write_synthetic_run(tmp_path_factory.mktemp("built") / "run")
    return run_dir, build_report(run_dir)


def page_without_plots(run_dir, max_tree_steps=20, max_trees_per_step=8) -> str:
    """The page as build_report renders it, minus the PNG drawing, for tests about the page's text."""
    run = read_run(run_dir)
    return render_page(run, [], viewer_data(run, max_tree_steps, max_trees_per_step))


def embedded_data(html_text: str) -> dict:
    m = re.search(r'<script type="application/json" id="tree-data">(.*?)</script>', html_text, re.S)
    return json.loads(m.group(1))


# -- pure numbers -----------------------------------------------------------------------------------

def test_moving_average_is_trailing_mean_with_short_start():
    # window 2 over 0.25, 0.5, 0.75, 1, 0: 0.25, (0.25+0.5)/2, (0.5+0.75)/2, (0.75+1)/2, (1+0)/2
    assert moving_average([0.25, 0.5, 0.75, 1.0, 0.0], 2) == pytest.approx([0.25, 0.375, 0.625, 0.875, 0.5])
    # window 3 over 3, 6, 9, 0: 3, 4.5, 6, 5
    assert moving_average([3, 6, 9, 0], 3) == pytest.approx([3, 4.5, 6, 5])
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0], 0)


def test_spread_steps_keeps_first_and_last():
    assert spread_steps([10, 20, 30, 40, 50], 3) == [10, 30, 50]
    assert spread_steps([10, 20], 5) == [10, 20]
    assert spread_steps([10, 20, 30], 1) == [30]


def test_error_rate_depth_and_length_from_trees(run_dir):
    run = read_run(run_dir)
    # (step, leaves, fraction not passing): A 1 of 3, B 2 of 2, C 2 of 5
    assert error_rate_by_tree(run.all_trees()) == [(2, 3, pytest.approx(1 / 3)), (2, 2, 1.0), (4, 5, 0.4)]
    # step 2 leaves: depth 1: A2, B1, B2; depth 2: A3, A4 -> 3/5 and 2/5
    assert depth_fractions(run.trees[2]) == {1: pytest.approx(0.6), 2: pytest.approx(0.4)}
    leaves = leaves_of(run.all_trees())
    # passing: depth 1: A2 (6), C2 (4) -> 5; depth 2: A3 (9), C7 (8) -> 8.5; depth 3: C5 (7)
    assert mean_length_by_depth(leaves, passed=True) == {1: (5.0, 2), 2: (8.5, 2), 3: (7.0, 1)}
    # not passing: depth 1: B1 (2), B2 (3) -> 2.5; depth 2: A4 (8), C4 (3) -> 5.5; depth 3: C6 (9)
    assert mean_length_by_depth(leaves, passed=False) == {1: (2.5, 2), 2: (5.5, 2), 3: (9.0, 1)}


# -- reading a run in progress ----------------------------------------------------------------------

def test_read_run_skips_truncated_lines_and_non_finite_values(run_dir):
    run = read_run(run_dir)
    assert [m["step"] for m in run.metrics] == list(range(1, N_STEPS + 1))  # truncated step 21 skipped
    assert "loss" not in run.metrics[2] and "entropy" not in run.metrics[3]
    assert sorted(run.trees) == [2, 4] and [t.prompt_id for t in run.trees[4]] == ["p0"]
    assert any(n.startswith("metrics.jsonl line 21") for n in run.notes)
    assert any(n.startswith("step-4.jsonl line 2") for n in run.notes)
    assert run.in_progress and run.mode == "tree"


def test_read_run_names_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(ReportError, match="not a run directory"):
        read_run(tmp_path)
    with pytest.raises(ReportError, match="does not exist"):
        read_run(tmp_path / "missing")


# -- what the panels draw ---------------------------------------------------------------------------

def panel(name):
    return next(p for p in PANELS if p.name == name)


def test_reward_panel_draws_rewards_and_their_moving_average(run_dir):
    fig = panel("reward").draw(read_run(run_dir))
    raw, smooth = fig.axes[0].lines
    assert list(raw.get_xdata()) == list(range(1, N_STEPS + 1))
    assert list(raw.get_ydata()) == [reward_at(s) for s in range(1, N_STEPS + 1)]
    # 20 steps -> window 2: 0.25, (0.25+0.5)/2, (0.5+0.75)/2, (0.75+1)/2, (1+0)/2, (0+0.25)/2
    assert list(smooth.get_ydata())[:6] == pytest.approx([0.25, 0.375, 0.625, 0.875, 0.5, 0.125])
    assert "moving average over 2 steps" in smooth.get_label()


def test_loss_panel_leaves_out_the_nan_step(run_dir):
    (line,) = panel("loss").draw(read_run(run_dir)).axes[0].lines
    assert 3 not in list(line.get_xdata()) and len(line.get_xdata()) == N_STEPS - 1
    assert all(math.isfinite(v) for v in line.get_ydata())


def test_timing_panel_has_one_line_per_phase_in_seconds(run_dir):
    ax = panel("timings").draw(read_run(run_dir)).axes[0]
    assert [ln.get_label() for ln in ax.lines] == ["rollout", "verify", "train"]
    assert ax.get_ylabel() == "wall-clock time (s)"
    assert set(ax.lines[0].get_ydata()) == {2.0}


def test_error_rate_panel_plots_one_point_per_tree(run_dir):
    ax = panel("error_rate").draw(read_run(run_dir)).axes[0]
    points = ax.collections[0].get_offsets().tolist()
    assert points == [[3, pytest.approx(1 / 3)], [2, 1.0], [5, 0.4]]


def test_depth_panel_bars_are_leaf_fractions(run_dir):
    ax = panel("depth").draw(read_run(run_dir)).axes[0]
    step2, step4 = ax.containers
    assert [b.get_height() for b in step2] == pytest.approx([0.6, 0.4])
    # step 4: depth 1: leaf 2; depth 2: leaves 4, 7; depth 3: leaves 5, 6 -> 1/5, 2/5, 2/5
    assert [b.get_height() for b in step4] == pytest.approx([0.2, 0.4, 0.4])


def test_panels_without_data_are_skipped_not_drawn(tmp_path):
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("tree:\n  mode: tree\n")
    run = read_run(run_dir)
    assert all(p.draw(run) is None for p in PANELS)


# -- the page ---------------------------------------------------------------------------------------

def test_script_json_cannot_close_the_script_element():
    text = script_json({"t": "</script><!-- & >"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"t": "</script><!-- & >"}


def test_report_is_one_self_contained_file(built):
    run_dir, index = built
    assert index == run_dir / "report" / "index.html"
    for p in PANELS:
        assert (run_dir / "report" / f"{p.name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = index.read_text()
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)) == len(PANELS)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing fetched, only in-page anchors
    assert "<link" not in page and "@import" not in page
    assert "default-src 'none'" in page
    # the untrusted completion only appears JSON-escaped, and decodes back to itself
    assert "<b>bold</b>" not in page
    nodes = embedded_data(page)["steps"][0]["trees"][0]["nodes"]
    assert nodes[2]["text"] == INJECTION
    assert "output_dir: &lt;runs &amp; co&gt;" in page  # config shown escaped


def test_embedded_trees_carry_what_the_viewer_shows(built):
    data = embedded_data(built[1].read_text())
    assert [s["step"] for s in data["steps"]] == [2, 4]
    n1 = data["steps"][0]["trees"][0]["nodes"][1]
    assert n1 == {"id": 1, "parent": 0, "depth": 1, "kind": "forced", "text": "First, 3 + 4 =", "tokens": 5,
                  "split_entropy": 1.2345, "verdict": None, "reward": 0.5, "advantage": -0.25}
    assert data["steps"][0]["trees"][0]["prompt_text"] is None  # no checkpoint tokenizer in this run


def test_status_says_in_progress_until_summary_exists(tmp_path):
    live = page_without_plots(write_synthetic_run(tmp_path / "live"))
    assert "in progress (no summary.json yet)" in live
    assert "metrics.jsonl line 21: skipped" in live
    done = page_without_plots(write_synthetic_run(tmp_path / "done", finished=True))
    assert "finished (summary.json written)" in done and "greedy_accuracy" in done


def test_flat_mode_run_reports_its_samples(tmp_path):
    run_dir = write_flat_run(tmp_path / "flat")
    page = page_without_plots(run_dir)
    assert "flat (GRPO samples)" in page
    nodes = embedded_data(page)["steps"][0]["trees"][0]["nodes"]
    assert [n["kind"] for n in nodes] == ["root"] + ["sample"] * 4
    assert depth_fractions(read_run(run_dir).trees[1]) == {1: 1.0}


def test_viewer_limits_thin_the_embedded_dumps_and_say_so(run_dir):
    page = page_without_plots(run_dir, max_tree_steps=1)
    assert [s["step"] for s in embedded_data(page)["steps"]] == [4]
    assert "1 of 3" in page  # trees in the viewer: step 4's one tree of the three dumped
    page = page_without_plots(run_dir, max_trees_per_step=1)
    assert [[t["prompt_id"] for t in s["trees"]] for s in embedded_data(page)["steps"]] == [["p0"], ["p0"]]
    assert "2 of 3" in page


def test_prompt_text_decoded_with_checkpoint_tokenizer(run_dir):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "What": 1, "is": 2, "3+4?": 3}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(run_dir / "checkpoint-4")
    run = read_run(run_dir)
    data = viewer_data(run, 20, 8, prompt_decoder(run))
    assert data["steps"][0]["trees"][0]["prompt_text"] == "What is 3+4?"  # prompt ids [1, 2, 3]


# -- the command ------------------------------------------------------------------------------------

def test_cli_report_writes_index(tmp_path):
    run_dir = write_flat_run(tmp_path / "flat")  # few panels have data: a quick build
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--no-prompt-text"])
    assert result.exit_code == 0, result.output
    assert str(run_dir / "report" / "index.html") in result.output


def test_cli_report_rejects_a_non_run_directory(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output
