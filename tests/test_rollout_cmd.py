"""`treerpo rollout` through click's CliRunner, on the arithmetic task with tiny-random and the real `boxed`
verifier: the dump follows the tree-dump contract, leaves are graded, rewards filled, task defaults yield to
the user's settings."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from treerpo_cli.main import cli
from treerpo_core.types import Tree

FAST = ["--model", "tiny-random", "--set", "sampling.max_new_tokens=12", "--set", "verifier.workers=1"]
NODE_KEYS = {"id", "parent", "depth", "kind", "token_ids", "text", "logprobs", "split_entropy", "verdict", "reward",
             "advantage"}


def rollout(tmp_path, *args):
    out = tmp_path / "trees.jsonl"
    result = CliRunner().invoke(cli, ["rollout", "--task", "arithmetic", *FAST, "--output", str(out), *args])
    return result, out


def test_rollout_writes_graded_trees_and_a_summary(tmp_path):
    result, out = rollout(tmp_path, "--num-prompts", "2", "--set", "tree.max_leaves=3")
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        d = json.loads(line)
        assert {"step", "prompt_id", "prompt_token_ids", "reference", "nodes"} <= set(d)
        assert all(set(n) >= NODE_KEYS for n in d["nodes"])
        tree = Tree.from_dict(d)
        leaves = tree.leaves()
        # --set beats the arithmetic task's tree_defaults (max_leaves 16)
        assert 2 <= len(leaves) <= 3
        assert all(leaf.verdict is not None for leaf in leaves)
        assert all(n.reward is not None and n.advantage is not None for n in tree.nodes)
        assert tree.nodes[0].kind == "root" and {n.kind for n in tree.children(0)} == {"forced"}
    for word in ("leaves", "splits forced", "pass rate", "tokens unique", "path sum"):
        assert word in result.output


def test_rollout_flat_mode(tmp_path):
    result, out = rollout(tmp_path, "--num-prompts", "1", "--set", "tree.mode=flat", "--set", "tree.n_flat=3")
    assert result.exit_code == 0, result.output
    tree = Tree.from_json(out.read_text().splitlines()[0])
    assert [n.kind for n in tree.nodes] == ["root", "sample", "sample", "sample"]


def test_unknown_task_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["rollout", "--task", "no-such-task", *FAST, "--output", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "no-such-task" in result.output


@pytest.mark.parametrize("bad", ["tree.h_th=high", "tree.no_such_key=1"])
def test_bad_settings_are_usage_errors(tmp_path, bad):
    result, _ = rollout(tmp_path, "--set", bad)
    assert result.exit_code == 2
    assert bad.split("=")[0] in result.output
