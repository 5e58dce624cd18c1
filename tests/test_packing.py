"""The packed tree forward gives, within 1e-4 in fp32, the log-probs (and gradients) of feeding every
root-to-node path separately: on random trees with coverage siblings, flat-mode samples, and trees split
into several packs. Uses tiny-random, whose random weights make any leak across branches visible."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from treerpo_core.config import LossConfig
from treerpo_core.logprobs import token_logprobs
from treerpo_core.loss import PolicyLoss, accumulate_policy_gradient
from treerpo_core.models import load_model
from treerpo_core.packing import (PackingError, ancestor_mask, build_pack, chunked_logprobs, pack_logprobs,
                                  plan_packs, tree_logprobs)
from treerpo_core.tree_attention import use_tree_attention
from treerpo_core.types import Node, Tree

TEMPERATURE = 0.7


@pytest.fixture(scope="module", params=["tree", "sdpa"])
def model(request):
    """Every exactness test runs twice: with tree attention (what the trainer uses: each segment attends to
    its path's keys) and with SDPA taking the dense [L, L] ancestor mask."""
    m, _ = load_model("tiny-random", dtype="float32", device="cpu")
    if request.param == "tree":
        assert use_tree_attention(m)
    return m


# -- trees ---------------------------------------------------------------------------------------


def _add(nodes: list[Node], parent: int, kind: str, rng: random.Random, length: int) -> int:
    nodes.append(Node(id=len(nodes), parent=parent, depth=nodes[parent].depth + 1, kind=kind,
                      token_ids=[rng.randrange(3, 2000) for _ in range(length)]))
    return len(nodes) - 1


def random_tree(seed: int, *, max_depth: int = 4) -> Tree:
    """Forced first split, random binary entropy splits, and coverage siblings topping some parents up
    to 4 children (the shapes the engine grows)."""
    rng = random.Random(seed)
    nodes = [Node(id=0, parent=None, depth=0, kind="root")]
    frontier = [_add(nodes, 0, "forced", rng, rng.randint(1, 8)) for _ in range(2)]
    while frontier:
        nid = frontier.pop()
        if nodes[nid].depth < max_depth and rng.random() < 0.6:
            frontier += [_add(nodes, nid, "entropy", rng, rng.randint(1, 8)) for _ in range(2)]
    parents = sorted({n.parent for n in nodes if n.parent is not None})
    full = rng.choice(parents)  # at least one parent gets the full 4 children
    for parent in parents:
        while sum(n.parent == parent for n in nodes) < 4 and (parent == full or rng.random() < 0.5):
            _add(nodes, parent, "coverage", rng, rng.randint(1, 8))
    prompt = [rng.randrange(3, 2000) for _ in range(rng.randint(3, 8))]
    return Tree(prompt_id=f"random-{seed}", prompt_token_ids=prompt, reference=None, nodes=nodes)


def flat_tree(seed: int, n: int = 4) -> Tree:
    """Flat (GRPO) mode: n independent samples, each a depth-1 child of the root."""
    rng = random.Random(seed)
    nodes = [Node(id=0, parent=None, depth=0, kind="root")]
    for _ in range(n):
        _add(nodes, 0, "sample", rng, rng.randint(3, 12))
    return Tree(prompt_id=f"flat-{seed}", prompt_token_ids=[rng.randrange(3, 2000) for _ in range(5)],
                reference=None, nodes=nodes)


def per_path_logprobs(model, tree: Tree, temperature: float = TEMPERATURE) -> dict[int, torch.Tensor]:
    """The reference: every root-to-node path (prompt + path) as its own row of a plain causal forward,
    right-padded (causal attention never looks at the padding after a row's tokens)."""
    nodes = [n for n in tree.nodes if n.parent is not None and n.token_ids]
    out = {}
    for i in range(0, len(nodes), 8):
        rows = [tree.prompt_token_ids + tree.path_token_ids(n.id) for n in nodes[i:i + 8]]
        width = max(len(r) for r in rows)
        logits = model(torch.tensor([r + [0] * (width - len(r)) for r in rows])).logits  # [B, width, V]
        for node, ids, row_logits in zip(nodes[i:i + 8], rows, logits):
            k = len(node.token_ids)
            out[node.id] = token_logprobs(row_logits[len(ids) - k - 1:len(ids) - 1], torch.tensor(ids[-k:]),
                                          temperature)
    return out


def fill_rollout(model, tree: Tree, seed: int = 0) -> Tree:
    """Give every node the old log-probs a rollout would have stored and a random advantage."""
    rng = random.Random(seed)
    with torch.no_grad():
        for nid, lp in per_path_logprobs(model, tree).items():
            tree.node(nid).logprobs = lp.tolist()
            tree.node(nid).advantage = rng.choice([-0.5, -0.25, 0.25, 0.5, 0.75])
    return tree


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# -- exactness -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_logprobs_equal_per_path(model, seed):
    tree = random_tree(seed)
    assert any(len(tree.children(n.id)) == 4 for n in tree.nodes), "want coverage siblings in the test tree"
    with torch.no_grad():
        assert _max_diff(tree_logprobs(model, tree, temperature=TEMPERATURE, max_packed_tokens=4096),
                         per_path_logprobs(model, tree)) < 1e-4


def test_flat_samples_equal_per_path(model):
    tree = flat_tree(3)
    with torch.no_grad():
        assert _max_diff(tree_logprobs(model, tree, temperature=TEMPERATURE, max_packed_tokens=4096),
                         per_path_logprobs(model, tree)) < 1e-4


def test_split_packs_equal_per_path(model):
    tree = random_tree(1)
    wanted = [n.id for n in tree.nodes if n.parent is not None]
    assert len(plan_packs(tree, wanted, 30)) > 2
    with torch.no_grad():
        assert _max_diff(tree_logprobs(model, tree, temperature=TEMPERATURE, max_packed_tokens=30),
                         per_path_logprobs(model, tree)) < 1e-4


def test_plan_packs_fit_and_yield_each_node_once():
    tree = random_tree(2)
    wanted = [n.id for n in tree.nodes if n.parent is not None]
    groups = plan_packs(tree, wanted, 30)
    assert sorted(nid for g in groups for nid in g) == sorted(wanted)
    for g in groups:
        pack = build_pack(tree, g)
        assert len(pack) <= 30
        for nid in pack.node_ids:  # every pack carries the ancestors of its nodes
            assert tree.node(nid).parent == 0 or tree.node(nid).parent in pack.node_ids


def test_path_longer_than_pack_limit_is_an_error_naming_it():
    tree = random_tree(0)
    with pytest.raises(PackingError, match="train.max_packed_tokens=5"):
        plan_packs(tree, [n.id for n in tree.nodes if n.parent is not None], 5)


# -- the mask ------------------------------------------------------------------------------------


def _hand_tree() -> Tree:
    # prompt [p0 p1]; root -> a [a0 a1] -> c [c0]; root -> b [b0 b1]
    nodes = [Node(id=0, parent=None, depth=0, kind="root"),
             Node(id=1, parent=0, depth=1, kind="forced", token_ids=[11, 12]),
             Node(id=2, parent=0, depth=1, kind="forced", token_ids=[21, 22]),
             Node(id=3, parent=1, depth=2, kind="entropy", token_ids=[31])]
    return Tree(prompt_id="hand", prompt_token_ids=[1, 2], reference=None, nodes=nodes)


def test_ancestor_mask_and_positions_by_hand():
    pack = build_pack(_hand_tree(), [1, 2, 3])
    assert pack.input_ids.tolist() == [1, 2, 11, 12, 31, 21, 22]  # depth-first: a, c, then b
    assert pack.position_ids.tolist() == [0, 1, 2, 3, 4, 2, 3]  # b continues from the prompt, not after c
    expected = [  # keys: p0 p1 a0 a1 c0 b0 b1
        [1, 0, 0, 0, 0, 0, 0],  # p0
        [1, 1, 0, 0, 0, 0, 0],  # p1
        [1, 1, 1, 0, 0, 0, 0],  # a0
        [1, 1, 1, 1, 0, 0, 0],  # a1
        [1, 1, 1, 1, 1, 0, 0],  # c0 sees its ancestor a
        [1, 1, 0, 0, 0, 1, 0],  # b0 sees the prompt and itself, never its sibling a or a's child c
        [1, 1, 0, 0, 0, 1, 1],  # b1
    ]
    assert ancestor_mask(pack.slot, pack.slot_visible).int().tolist() == expected
    # c0 is predicted from a1 (position 3); b0 from the last prompt token (position 1), b1 from b0
    assert pack.predictors[3].tolist() == [3] and pack.predictors[2].tolist() == [1, 5]


def test_model_honours_the_mask(model):
    """The 4-D mask's contents reach attention: the same packed sequence and positions with a plain causal
    4-D mask (b sees its sibling's branch) moves b's log-probs, while the ancestor mask reproduces the
    separate-path reference. Were the 4-D mask dropped, both would come out the same."""
    tree = _hand_tree()
    pack = build_pack(tree, [1, 2, 3])
    n = len(pack)
    with torch.no_grad():
        packed = pack_logprobs(model, pack, temperature=TEMPERATURE)[2]
        causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]  # the form SDPA takes
        logits = model(pack.input_ids[None], attention_mask=causal, position_ids=pack.position_ids[None]).logits[0]
        leaked = token_logprobs(logits[[1, 5]], pack.input_ids[5:7], TEMPERATURE)
        reference = per_path_logprobs(model, tree)[2]
    assert float((packed - reference).abs().max()) < 1e-4
    assert float((leaked - reference).abs().max()) > 1e-3


def test_sibling_tokens_do_not_change_a_node(model):
    tree = random_tree(0)
    with torch.no_grad():
        before = tree_logprobs(model, tree, temperature=TEMPERATURE, max_packed_tokens=4096)
        first, second = tree.children(0)[:2]
        first.token_ids = [t + 1 for t in first.token_ids]  # rewrite one branch's first segment
        after = tree_logprobs(model, tree, temperature=TEMPERATURE, max_packed_tokens=4096)
    for nid in before:
        if first.id not in [n.id for n in tree.path(nid)]:
            assert torch.equal(before[nid], after[nid]) or float((before[nid] - after[nid]).abs().max()) < 1e-6
    assert float((before[first.id] - after[first.id]).abs().max()) > 1e-3  # and the changed branch did move


def test_eager_attention_gets_an_additive_mask(model):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    tree = random_tree(2)
    with torch.no_grad():
        assert _max_diff(tree_logprobs(eager, tree, temperature=TEMPERATURE, max_packed_tokens=4096),
                         per_path_logprobs(model, tree)) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention compiles for minutes on CPU")
def test_flex_attention_gets_a_block_mask(model):
    flex = copy.deepcopy(model).cuda()
    flex.set_attn_implementation("flex_attention")
    tree = random_tree(2)
    with torch.no_grad():
        got = {k: v.cpu() for k, v in tree_logprobs(flex, tree, temperature=TEMPERATURE, max_packed_tokens=40).items()}
        assert _max_diff(got, per_path_logprobs(model, tree)) < 1e-4


def test_attention_that_ignores_the_mask_is_refused(model):
    blind = copy.deepcopy(model)
    blind.config._attn_implementation = "flash_attention_2"  # cannot load it on CPU; the check reads the config
    with pytest.raises(PackingError, match="flash_attention_2"):
        tree_logprobs(blind, random_tree(0), temperature=TEMPERATURE, max_packed_tokens=4096)


# -- chunked log-probs and gradients ---------------------------------------------------------------


def test_chunked_logprobs_equal_unchunked_with_gradients():
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(11, 16, requires_grad=True)
    targets = torch.randint(0, 50, (11,))
    full = token_logprobs(lm_head(hidden), targets, TEMPERATURE)
    (g_full,) = torch.autograd.grad(full.sum(), lm_head.weight)
    chunked = chunked_logprobs(lm_head, hidden, targets, TEMPERATURE, chunk_size=3)  # chunks 3,3,3,2
    (g_chunked,) = torch.autograd.grad(chunked.sum(), lm_head.weight)
    assert torch.allclose(full, chunked, atol=1e-6)
    assert torch.allclose(g_full, g_chunked, atol=1e-6)


@pytest.mark.parametrize("ratio", ["token", "node"])
def test_gradient_equals_per_path_loss(model, ratio):
    policy = copy.deepcopy(model)
    trees = [fill_rollout(model, random_tree(4), seed=1), fill_rollout(model, flat_tree(5), seed=2)]
    with torch.no_grad():  # move the policy off the rollout weights so ratios are not all 1
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    loss_fn = PolicyLoss(LossConfig(ratio=ratio))

    policy.zero_grad()
    stats = accumulate_policy_gradient(policy, trees, loss_fn, temperature=TEMPERATURE, max_packed_tokens=30)
    packed_grads = [p.grad.clone() for p in policy.parameters()]
    assert stats["packs"] > len(trees)

    policy.zero_grad()
    normalizer = loss_fn.normalizer(trees)
    reference = 0.0
    for tree in trees:
        new = per_path_logprobs(policy, tree)
        nodes = loss_fn.nodes_in_loss(tree)
        reference = reference + loss_fn.pack_loss(nodes, [new[n.id] for n in nodes], normalizer).loss
    reference.backward()
    assert stats["loss"] == pytest.approx(reference.item(), abs=1e-5)
    for p, g in zip(policy.parameters(), packed_grads):
        assert torch.allclose(p.grad, g, atol=1e-5, rtol=1e-4)
