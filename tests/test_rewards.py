"""Rewards and advantages (paper section 3.1) on small trees, against values computed by hand."""

from __future__ import annotations

import pytest

from treerpo_core.rewards import assign_rewards, tree_metrics
from treerpo_core.types import Node, Tree, Verdict

P, F, E, T = Verdict.PASS, Verdict.FAIL, Verdict.ERROR, Verdict.TIMEOUT


def make_tree(v2=F, v3=P, v5=P, v6=E) -> Tree:
    """root -> 1, 2 (forced); 1 -> 3, 4; 4 -> 5, 6 (entropy). Leaves 2, 3, 5, 6.
    Token counts per node: 1:2, 2:3, 3:1, 4:2, 5:1, 6:2."""
    spec = [(1, 0, 1, "forced", 2, None), (2, 0, 1, "forced", 3, v2), (3, 1, 2, "entropy", 1, v3),
            (4, 1, 2, "entropy", 2, None), (5, 4, 3, "entropy", 1, v5), (6, 4, 3, "entropy", 2, v6)]
    nodes = [Node(id=0, parent=None, depth=0, kind="root")]
    for nid, parent, depth, kind, n_tokens, verdict in spec:
        nodes.append(Node(id=nid, parent=parent, depth=depth, kind=kind, token_ids=[7] * n_tokens,
                          logprobs=[-1.0] * n_tokens, verdict=verdict))
    return Tree(prompt_id="p", prompt_token_ids=[1, 2], reference="x", nodes=nodes, info={"entropy_mean": 1.5})


def rewards(tree):
    return [n.reward for n in tree.nodes]


def advantages(tree):
    return [n.advantage for n in tree.nodes]


def test_interior_reward_is_mean_of_descendant_leaves_not_of_children():
    tree = make_tree()
    assign_rewards(tree, "fail")
    # leaves 2:0, 3:1, 5:1, 6:0 (ERROR counts as fail); node 4 = (1+0)/2; node 1 = (1+1+0)/3, not (1+0.5)/2
    assert rewards(tree) == pytest.approx([0.5, 2 / 3, 0.0, 1.0, 0.5, 1.0, 0.0])


def test_advantage_is_reward_minus_sibling_mean_without_std_scaling():
    tree = make_tree()
    assign_rewards(tree, "fail")
    # a1 = 2/3 - (2/3 + 0)/2; a3 = 1 - (1 + 0.5)/2; a5 = 1 - (1 + 0)/2; the root has no siblings
    assert advantages(tree) == pytest.approx([0.0, 1 / 3, -1 / 3, 0.25, -0.25, 0.5, -0.5])


def test_drop_leaves_error_out_of_the_means():
    tree = make_tree()
    assign_rewards(tree, "drop")
    # leaf 6 (ERROR) is dropped: node 4 = 1, node 1 = (1+1)/2, root = (0+1+1)/3
    assert rewards(tree) == pytest.approx([2 / 3, 1.0, 0.0, 1.0, 1.0, 1.0, None])
    assert advantages(tree) == pytest.approx([0.0, 0.5, -0.5, 0.0, 0.0, 0.0, None])


def test_drop_gives_no_reward_to_a_node_whose_leaves_are_all_dropped():
    tree = make_tree(v5=T, v6=E)
    assign_rewards(tree, "drop")
    assert tree.node(4).reward is None and tree.node(4).advantage is None
    assert tree.node(5).advantage is None and tree.node(6).advantage is None
    # node 3's only counted sibling is itself
    assert tree.node(3).advantage == 0.0
    assert tree.node(1).reward == 1.0


def test_fail_scores_timeout_as_zero():
    tree = make_tree(v5=T, v6=P)
    assign_rewards(tree, "fail")
    assert tree.node(5).reward == 0.0 and tree.node(4).reward == 0.5


def test_leaf_without_verdict_is_an_error_naming_it():
    tree = make_tree()
    tree.node(3).verdict = None
    with pytest.raises(ValueError, match="leaf node 3"):
        assign_rewards(tree)


def test_unknown_on_error_is_rejected():
    with pytest.raises(ValueError, match="on_error"):
        assign_rewards(make_tree(), "ignore")


def test_tree_metrics_of_the_hand_tree():
    tree = make_tree()
    assign_rewards(tree, "fail")
    m = tree_metrics([tree])
    assert m["reward_mean"] == pytest.approx(0.5)
    assert (m["verdict/pass"], m["verdict/fail"], m["verdict/error"], m["verdict/timeout"]) == (0.5, 0.25, 0.25, 0.0)
    assert m["entropy"] == 1.5
    assert (m["tree/nodes"], m["tree/leaves"], m["tree/depth_max"]) == (6, 4, 3)
    assert m["tree/depth_mean"] == pytest.approx((1 + 2 + 3 + 3) / 4)
    assert (m["splits/forced"], m["splits/entropy"], m["splits/coverage"]) == (1, 2, 0)
    # unique 2+3+1+2+1+2; paths: leaf 2: 3, leaf 3: 2+1, leaf 5: 2+2+1, leaf 6: 2+2+2
    assert (m["tokens/unique"], m["tokens/path_sum"]) == (11, 17)
    assert m["frac_zero_var_groups"] == 0.0


def test_metrics_with_drop_leave_dropped_leaves_out_of_reward_mean():
    tree = make_tree()
    assign_rewards(tree, "drop")
    assert tree_metrics([tree])["reward_mean"] == pytest.approx(2 / 3)  # leaves 2, 3, 5: 0, 1, 1


def test_zero_variance_groups_are_pooled_over_trees():
    flat = Tree(prompt_id="f", prompt_token_ids=[1], reference="x",
                nodes=[Node(id=0, parent=None, depth=0, kind="root")]
                + [Node(id=i, parent=0, depth=1, kind="sample", token_ids=[3], verdict=F) for i in (1, 2, 3)])
    tree = make_tree()
    for t in (flat, tree):
        assign_rewards(t, "fail")
    m = tree_metrics([flat, tree])
    assert m["frac_zero_var_groups"] == pytest.approx(1 / 4)  # flat's one group of three FAILs; tree's three differ
    assert m["tree/leaves"] == pytest.approx((3 + 4) / 2)
    assert m["splits/forced"] == pytest.approx(0.5)
