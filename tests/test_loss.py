"""The policy loss: hand-computed surrogate values for each ratio mode and aggregator, and (with tiny-random)
that one update per batch leaves clipping idle while a changed policy makes it act."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch

from treerpo_core.config import LossConfig
from treerpo_core.loss import PolicyLoss, accumulate_policy_gradient, clipped_surrogate
from treerpo_core.types import Node, Tree


def test_clipped_surrogate_both_sides():
    ratio = torch.tensor([0.5, 1.0, 1.5, 0.5, 1.5])
    adv = torch.tensor([1.0, 2.0, 1.0, -1.0, -1.0])
    loss, clipped = clipped_surrogate(ratio, adv, 0.2, 0.2)
    # -min(ρA, clip(ρ)A): 0.5 vs 0.8 -> 0.5; 2 vs 2; 1.5 vs 1.2 -> 1.2 (clipped above);
    # -0.5 vs -0.8 -> -0.8 (clipped below); -1.5 vs -1.2 -> -1.5 (pessimistic, not clipped)
    assert loss.tolist() == pytest.approx([-0.5, -2.0, -1.2, 0.8, 1.5])
    assert clipped.tolist() == [False, False, True, True, False]


def test_clipped_surrogate_asymmetric_eps():
    loss, clipped = clipped_surrogate(torch.tensor([1.25, 0.85]), torch.tensor([1.0, -1.0]), 0.1, 0.3)
    # 1.25 < 1 + 0.3: untouched; 0.85 < 1 - 0.1: clipped to 0.9 and -0.9 < -0.85 wins
    assert loss.tolist() == pytest.approx([-1.25, 0.9])
    assert clipped.tolist() == [False, True]


def _tree(advantages=(1.0, -0.5, 0.0)) -> tuple[Tree, list[torch.Tensor]]:
    """Three nodes under the root with chosen token ratios:
    n1: 2 tokens, ratios [1.5, 1.0]; n2: 1 token, ratio [0.5]; n3: 3 tokens, ratios [2.0, 1.0, 0.5]."""
    ratios = [[1.5, 1.0], [0.5], [2.0, 1.0, 0.5]]
    nodes = [Node(id=0, parent=None, depth=0, kind="root")]
    new = []
    for i, (r, a) in enumerate(zip(ratios, advantages), start=1):
        old = [-1.0 - 0.1 * j for j in range(len(r))]
        nodes.append(Node(id=i, parent=0, depth=1, kind="forced", token_ids=list(range(10, 10 + len(r))),
                          logprobs=old, advantage=a))
        new.append(torch.tensor([o + math.log(x) for o, x in zip(old, r)], dtype=torch.float64))
    return Tree(prompt_id="p", prompt_token_ids=[1, 2], reference=None, nodes=nodes), new


def _loss(tree, new, **cfg):
    pl = PolicyLoss(LossConfig(**cfg), max_new_tokens=10)
    nodes = pl.nodes_in_loss(tree)
    out = pl.pack_loss(nodes, [new[n.id - 1] for n in nodes], pl.normalizer([tree]))
    return out, pl


# per-token losses: n1 [-1.2 (clipped), -1.0], n2 [0.4 (clipped)], n3 [0, 0, 0] -> sum -1.8 over 6 tokens
@pytest.mark.parametrize("aggregate, expected", [
    ("token_mean", -1.8 / 6),
    ("node_mean", (-1.1 + 0.4 + 0.0) / 3),  # each node's token mean, then mean over 3 nodes
    ("constant", -1.8 / 10),  # max_new_tokens (10) x 1 tree
])
def test_token_ratio_aggregators(aggregate, expected):
    tree, new = _tree()
    out, _ = _loss(tree, new, ratio="token", aggregate=aggregate)
    assert out.loss.item() == pytest.approx(expected)
    assert (out.units, out.clipped, out.tokens) == (6, 2, 6)


# node ratios (geometric means): n1 sqrt(1.5) = 1.2247 -> clipped to 1.2, loss -1.2; n2 0.5 -> 0.4 (clipped);
# n3 (2 * 1 * 0.5)^(1/3) = 1, advantage 0 -> 0
@pytest.mark.parametrize("aggregate, expected", [
    ("token_mean", (2 * -1.2 + 1 * 0.4) / 6),  # a node's single loss weighs as many tokens as it holds
    ("node_mean", (-1.2 + 0.4) / 3),
    ("constant", (2 * -1.2 + 1 * 0.4) / 10),
])
def test_node_ratio_aggregators(aggregate, expected):
    tree, new = _tree()
    out, _ = _loss(tree, new, ratio="node", aggregate=aggregate)
    assert out.loss.item() == pytest.approx(expected)
    assert (out.units, out.clipped) == (3, 2)
    assert out.ratio_sum == pytest.approx(math.sqrt(1.5) + 0.5 + 1.0)


def test_drop_zero_advantage_leaves_node_out():
    tree, new = _tree()
    out, pl = _loss(tree, new, drop_zero_advantage=True)
    assert [n.id for n in pl.nodes_in_loss(tree)] == [1, 2]
    assert pl.normalizer([tree]) == 3.0
    assert out.loss.item() == pytest.approx(-1.8 / 3)


def test_none_advantage_never_enters_loss():
    tree, _ = _tree(advantages=(1.0, None, 0.0))  # node 2 dropped upstream (loss.on_error=drop)
    pl = PolicyLoss(LossConfig())
    assert [n.id for n in pl.nodes_in_loss(tree)] == [1, 3]
    assert pl.normalizer([tree]) == 5.0


def test_unknown_variant_names_the_key():
    with pytest.raises(ValueError, match="loss.aggregate"):
        PolicyLoss(LossConfig(aggregate="seq_mean"))
    with pytest.raises(ValueError, match="loss.ratio"):
        PolicyLoss(LossConfig(ratio="sequence"))


def test_missing_old_logprobs_is_an_error_naming_the_node():
    tree, _ = _tree()
    tree.nodes[2].logprobs = []
    with pytest.raises(ValueError, match="node 2"):
        PolicyLoss(LossConfig()).nodes_in_loss(tree)


# -- with a model: the paper's one update per batch vs a changed policy ------------------------------


@pytest.fixture(scope="module")
def model():
    from treerpo_core.models import load_model

    m, _ = load_model("tiny-random", dtype="float32", device="cpu")
    return m


def _rollout_trees(model):
    from test_packing import fill_rollout, flat_tree, random_tree

    return [fill_rollout(model, random_tree(2), seed=3), fill_rollout(model, flat_tree(6), seed=4)]


def test_unchanged_weights_give_ratio_one_and_idle_clipping(model):
    trees = _rollout_trees(model)
    model.zero_grad()
    stats = accumulate_policy_gradient(model, trees, PolicyLoss(LossConfig()), temperature=0.7,
                                       max_packed_tokens=4096)
    model.zero_grad()
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert stats["clip_ratio"] == 0.0
    assert stats["tokens"] == sum(t.unique_tokens for t in trees)


@pytest.mark.parametrize("ratio", ["token", "node"])
def test_clipping_acts_once_the_policy_has_moved(model, ratio):
    """A second epoch over the same batch (train.ppo_epochs > 1): after one large step the ratios leave
    [1 - eps, 1 + eps] and clipping shows in clip_ratio."""
    policy = copy.deepcopy(model)
    trees = _rollout_trees(model)
    loss_fn = PolicyLoss(LossConfig(ratio=ratio))
    accumulate_policy_gradient(policy, trees, loss_fn, temperature=0.7, max_packed_tokens=4096)
    with torch.no_grad():
        for p in policy.parameters():
            p.sub_(p.grad.sign() * 0.05)  # a deliberately large step
    stats = accumulate_policy_gradient(policy, trees, loss_fn, temperature=0.7, max_packed_tokens=4096)
    assert stats["clip_ratio"] > 0.0
    assert abs(stats["ratio_mean"] - 1.0) > 1e-2


def test_minibatch_without_loss_nodes_calls_no_backward(model):
    tree, _ = _tree(advantages=(None, None, None))
    calls = []
    stats = accumulate_policy_gradient(model, [tree], PolicyLoss(LossConfig()), temperature=0.7,
                                       max_packed_tokens=4096, backward=calls.append)
    assert calls == [] and stats["loss"] == 0.0 and stats["packs"] == 0


def test_no_sync_wraps_every_pack_but_the_last(model):
    trees = _rollout_trees(model)
    entered, shares = [], []

    @contextlib.contextmanager
    def no_sync():
        entered.append(len(shares))
        yield

    stats = accumulate_policy_gradient(model, trees, PolicyLoss(LossConfig()), temperature=0.7,
                                       max_packed_tokens=30, backward=shares.append, no_sync=no_sync)
    assert stats["packs"] == len(shares) > 2
    assert entered == list(range(len(shares) - 1))
    assert sum(s.item() for s in shares) == pytest.approx(stats["loss"])
