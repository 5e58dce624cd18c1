"""Core records: verdict serialisation and the tree-dump JSON round trip."""

import json

import pytest

from treerpo_core.types import Example, Node, Tree, Verdict, VerifyResult


def test_verdicts_serialise_as_upper_case_strings():
    assert [v.value for v in Verdict] == ["PASS", "FAIL", "ERROR", "TIMEOUT"]
    assert json.dumps(VerifyResult(Verdict.TIMEOUT, "slow").to_dict()) == '{"verdict": "TIMEOUT", "reason": "slow"}'


def test_verify_result_keyword_construction_and_string_verdicts():
    r = VerifyResult(verdict="pass")
    assert r.verdict is Verdict.PASS and r.reason == "" and r.reward == 1.0
    assert VerifyResult(verdict=Verdict.ERROR, reason="boom").reward == 0.0
    with pytest.raises(ValueError):
        VerifyResult("MAYBE")


def _tree():
    nodes = [
        Node(0, None, 0, "root"),
        Node(1, 0, 1, "forced", [5, 6], "ab", [-0.1, -0.2], split_entropy=1.3, reward=0.5, advantage=0.25),
        Node(2, 0, 1, "forced", [7], "c", [-0.3], verdict=Verdict.FAIL, reward=0.0, advantage=-0.25),
        Node(3, 1, 2, "entropy", [8, 9], "de", [-0.4, -0.5], verdict=Verdict.PASS, reward=1.0, advantage=0.5),
        Node(4, 1, 2, "entropy", [10], "f", [-0.6], verdict=Verdict.TIMEOUT, reward=0.0, advantage=-0.5),
    ]
    return Tree("p-1", [1, 2, 3], "42", nodes, step=3)


def test_tree_dump_has_the_contract_keys():
    d = json.loads(_tree().to_json())
    assert {"step", "prompt_id", "prompt_token_ids", "reference", "nodes"} <= set(d)
    assert set(d["nodes"][3]) == {"id", "parent", "depth", "kind", "token_ids", "text", "logprobs", "split_entropy",
                                  "verdict", "reward", "advantage"}
    assert d["nodes"][3]["verdict"] == "PASS" and d["nodes"][0]["parent"] is None


def test_tree_json_round_trip_is_lossless():
    tree = _tree()
    again = Tree.from_json(tree.to_json())
    assert again == tree
    assert again.nodes[4].verdict is Verdict.TIMEOUT


def test_tree_structure_helpers():
    tree = _tree()
    assert [n.id for n in tree.leaves()] == [2, 3, 4]
    assert tree.path_token_ids(3) == [5, 6, 8, 9]
    assert tree.unique_tokens == 6 and tree.path_token_sum == 1 + 4 + 3


def test_unknown_node_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        Node(1, 0, 1, "branch")


def test_example_round_trip():
    ex = Example("e1", [{"role": "user", "content": "hi"}], "x", {"source": "s"}, target="t")
    assert Example.from_dict(json.loads(json.dumps(ex.to_dict()))) == ex
