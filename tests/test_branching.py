"""Each split rule of paper section 3.2, and each budget, on a scripted model whose entropy, delimiters and
path ends sit at chosen positions (tests/stub_lm.py). Default script: the first token is drawn from 20
equally likely tokens, tokens 1-4 are filler, token 5 is the delimiter, token 6 is again drawn from 20
(entropy ln 20), tokens 7-9 filler, token 10 is EOS: so a path is 11 tokens."""

from __future__ import annotations

import pytest
from stub_lm import DELIM, EOS, FILLER, HIGH_ENTROPY, SPREAD, StubDelimiter, StubLM, StubTokenizer

from treerpo_core.config import SamplingConfig, TreeConfig
from treerpo_core.rollout import branching
from treerpo_core.rollout.engine import TreeEngine
from treerpo_core.types import Example, Node, Tree

SCRIPT = dict(high_at=(0, 6), delim_at=(5,), eos_at=10)


def grow(model=None, *, delimiter="stub", seed=0, prompts=1, max_new_tokens=64, **tree):
    model = model or StubLM(**SCRIPT)
    tree = {"l_min": 4, "h_th": 1.0, "s_min": 1000, **tree}
    engine = TreeEngine(model, StubTokenizer(), tree=TreeConfig(**tree),
                        sampling=SamplingConfig(max_new_tokens=max_new_tokens),
                        delimiter=StubDelimiter() if delimiter == "stub" else delimiter)
    examples = [Example(id=f"p{i}", prompt=[{"role": "user", "content": "q"}], reference="r") for i in range(prompts)]
    return engine.grow(examples, seed=seed)


def kinds(tree):
    return [n.kind for n in tree.nodes]


def test_forced_split_gives_two_depth1_children_with_distinct_first_tokens():
    for seed in range(5):
        # peaked first position: the second child's token must still differ from the sampled one
        tree = grow(StubLM(high_at=(), eos_at=3), seed=seed)[0]
        first = [n.token_ids[0] for n in tree.children(0)]
        assert [n.kind for n in tree.children(0)] == ["forced", "forced"]
        assert [n.depth for n in tree.children(0)] == [1, 1]
        assert len(set(first)) == 2 and FILLER in first


def test_regular_split_happens_at_first_token_after_delimiter():
    tree = grow()[0]
    assert kinds(tree) == ["root", "forced", "forced"] + ["entropy"] * 4
    for parent in tree.children(0):
        # the node ends at the delimiter (its 6 own tokens >= l_min) and records the entropy that split it
        assert len(parent.token_ids) == 6 and parent.token_ids[-1] == DELIM
        assert parent.split_entropy == pytest.approx(HIGH_ENTROPY, abs=1e-6)
        a, b = tree.children(parent.id)
        assert a.depth == b.depth == 2
        assert a.token_ids[0] != b.token_ids[0] and {a.token_ids[0], b.token_ids[0]} <= set(SPREAD)
    assert all(leaf.token_ids[-1] == EOS and len(leaf.token_ids) == 5 for leaf in tree.leaves())


def test_no_split_below_entropy_threshold():
    tree = grow(h_th=HIGH_ENTROPY + 0.01)[0]
    assert kinds(tree) == ["root", "forced", "forced"]
    assert all(len(n.token_ids) == 11 for n in tree.leaves())


def test_segment_must_reach_l_min():
    assert kinds(grow(l_min=7)[0]) == ["root", "forced", "forced"]  # segment before the split point is 6
    assert kinds(grow(l_min=6)[0]).count("entropy") == 4  # "at least l_min"


def test_high_entropy_not_right_after_delimiter_does_not_split():
    # delimiter at 4, so the first token after it (5) is low-entropy; token 6 is high but follows filler
    tree = grow(StubLM(high_at=(0, 6), delim_at=(4,), eos_at=10))[0]
    assert kinds(tree) == ["root", "forced", "forced"]


def test_no_regular_split_at_max_depth():
    assert kinds(grow(max_depth=1)[0]) == ["root", "forced", "forced"]
    assert kinds(grow(max_depth=2)[0]).count("entropy") == 4


def test_no_delimiter_rule_means_no_regular_splits():
    assert kinds(grow(delimiter=None)[0]) == ["root", "forced", "forced"]


def test_allows_split_sees_the_path_and_can_veto():
    veto = StubDelimiter(allow=False, with_allows=True)
    tree = grow(delimiter=veto)[0]
    assert kinds(tree) == ["root", "forced", "forced"]
    assert len(veto.asked) == 2  # once per forced node, at token 6
    for prefix, next_id in veto.asked:
        assert len(prefix) == 6 and prefix[-1] == DELIM and next_id in SPREAD


def test_max_leaves_stops_branching_and_is_recorded():
    tree = grow(max_leaves=3)[0]
    assert len(tree.leaves()) == 3 and kinds(tree).count("entropy") == 2
    assert tree.info["budget_hit"] == "max_leaves"


def test_max_tree_tokens_stops_branching_and_is_recorded():
    tree = grow(max_tree_tokens=5)[0]  # 12 unique tokens exist when the split point comes
    assert kinds(tree) == ["root", "forced", "forced"]
    assert tree.info["budget_hit"] == "max_tree_tokens"


def test_max_new_tokens_ends_every_path():
    tree = grow(max_new_tokens=8)[0]
    assert tree.info["budget_hit"] == "max_new_tokens"
    assert len(tree.leaves()) == 4
    assert all(len(tree.path_token_ids(leaf.id)) == 8 for leaf in tree.leaves())
    assert tree.info["budget_hit"] == "max_new_tokens" and grow()[0].info["budget_hit"] is None


def test_coverage_children_join_the_parent_of_long_leaves_and_do_not_split():
    tree = grow(s_min=4)[0]  # the four entropy leaves have 5 tokens each
    for parent in tree.children(0):
        children = tree.children(parent.id)
        assert [c.kind for c in children] == ["entropy", "entropy", "coverage", "coverage"]
        for c in children[2:]:  # they start right after the delimiter at high entropy, yet stay leaves
            assert c.depth == 2 and len(c.token_ids) == 5 and c.token_ids[0] in SPREAD and c.token_ids[-1] == EOS
    assert kinds(grow(s_min=5)[0]).count("coverage") == 0  # "longer than s_min"


def test_coverage_children_of_the_root():
    tree = grow(h_th=9.0, s_min=10)[0]  # no regular split; the two forced leaves have 11 tokens
    assert [c.kind for c in tree.children(0)] == ["forced", "forced", "coverage", "coverage"]
    assert all(c.depth == 1 and c.token_ids[-1] == EOS for c in tree.children(0))


def _hand_tree(n_children, long_leaves):
    nodes = [Node(id=0, parent=None, depth=0, kind="root")]
    for i in range(1, n_children + 1):
        nodes.append(Node(id=i, parent=0, depth=1, kind="forced", token_ids=[7] * (50 if i <= long_leaves else 5)))
    return Tree(prompt_id="t", prompt_token_ids=[1], reference=None, nodes=nodes)


def test_coverage_respects_four_children_per_branch_point():
    cfg = TreeConfig(s_min=10)
    budget = branching.Budget(cfg, leaves=3)
    assert branching.coverage_parents(_hand_tree(3, 3), cfg, budget) == [0]  # 3 children + 1 = 4


def test_coverage_respects_leaf_budget():
    cfg = TreeConfig(s_min=10, max_leaves=3)
    budget = branching.Budget(cfg, leaves=2)
    assert branching.coverage_parents(_hand_tree(2, 2), cfg, budget) == [0]
    assert budget.leaves == 3 and budget.first_hit == "max_leaves"


def test_all_rows_of_all_prompts_decode_together():
    model = StubLM(**SCRIPT)
    trees = grow(model, prompts=3, s_min=4)
    assert all(len(t.leaves()) == 8 for t in trees)
    # growth: one prefill + 10 feeds (paths are 11 tokens); coverage: one prefill of the parents' paths + 4 feeds
    assert model.forwards == 11 + 5


def test_flat_mode_gives_n_independent_samples():
    model = StubLM(**SCRIPT)
    tree = grow(model, mode="flat", n_flat=5)[0]
    samples = tree.children(0)
    assert kinds(tree) == ["root"] + ["sample"] * 5 and len(tree.leaves()) == 5
    assert all(n.depth == 1 and len(n.token_ids) == 11 and n.split_entropy is None for n in samples)
    assert len({n.token_ids[0] for n in samples}) > 1
    assert model.forwards == 11


def test_same_seed_same_tree_different_seed_different_tree():
    a, b, c = grow(seed=3, s_min=4)[0], grow(seed=3, s_min=4)[0], grow(seed=4, s_min=4)[0]
    assert a.to_json() == b.to_json()
    assert a.to_json() != c.to_json()


def test_engine_leaves_grad_mode_and_training_flag_alone():
    model = StubLM(**SCRIPT)
    model.train()
    tree = grow(model)[0]
    assert model.training
    assert all(isinstance(lp, float) for n in tree.nodes for lp in n.logprobs)
    assert tree.info["entropy_mean"] is not None and 0 < tree.info["entropy_mean"] < HIGH_ENTROPY
