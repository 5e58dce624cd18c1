"""Packed tree forward+backward against one row per node (how the paper's public code trains).

A synthetic 16-leaf, depth-4 binary tree with realistic lengths (prompt ~100 tokens, segments 40-80) is
trained on twice with the same policy loss: once packed (every node's tokens once, ancestor mask, one
forward per tree) and once with one sequence per node holding its full prefix and its own segment. Both
run forward+backward; we report the median time of each, the unique-token ratio (the speedup to expect
when cost follows tokens) and the largest difference between the two ways' log-probs.

    python benchmarks/tree_forward.py [--model smollm2-135m] [--repeats 3] [--dense-mask]

The packed forward uses tree attention, as the trainer does (each segment attends to its own path's keys;
treerpo_core/tree_attention.py); `--dense-mask` measures SDPA with the dense [L, L] ancestor mask instead.

Last line: `speedup=<x> max_abs_diff=<d>`. Run it on a quiet machine when you can; on a shared one the
medians still compare like with like, since the two ways alternate within each repeat.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from treerpo_core.config import LossConfig
from treerpo_core.logprobs import token_logprobs
from treerpo_core.loss import PolicyLoss, accumulate_policy_gradient
from treerpo_core.models import load_model
from treerpo_core.packing import tree_logprobs
from treerpo_core.tree_attention import use_tree_attention
from treerpo_core.types import Node, Tree

TEMPERATURE = 0.6


def synthetic_tree(*, seed: int = 0, depth: int = 4, prompt_len: int = 100, seg_min: int = 40,
                   seg_max: int = 80, vocab: int = 49152) -> Tree:
    """A full binary tree of the given depth (2**depth leaves) with random token ids and segment lengths."""
    rng = random.Random(seed)
    nodes = [Node(id=0, parent=None, depth=0, kind="root")]
    frontier = [0]
    for d in range(1, depth + 1):
        nxt = []
        for parent in frontier:
            for _ in range(2):
                nodes.append(Node(id=len(nodes), parent=parent, depth=d, kind="forced" if d == 1 else "entropy",
                                  token_ids=[rng.randrange(3, vocab) for _ in range(rng.randint(seg_min, seg_max))],
                                  advantage=rng.choice([-0.5, -0.25, 0.25, 0.5])))
                nxt.append(len(nodes) - 1)
        frontier = nxt
    prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
    return Tree(prompt_id="bench", prompt_token_ids=prompt, reference=None, nodes=nodes)


def row_logprobs(model, tree: Tree, node: Node) -> torch.Tensor:
    """The per-node row: prompt + full prefix + segment, plain causal forward, the segment's log-probs."""
    ids = tree.prompt_token_ids + tree.path_token_ids(node.id)
    k = len(node.token_ids)
    logits = model(torch.tensor([ids])).logits[0]  # [len(ids), V]
    return token_logprobs(logits[len(ids) - k - 1:-1], torch.tensor(ids[-k:]), TEMPERATURE)


def per_node_step(model, tree: Tree, loss_fn: PolicyLoss) -> dict[int, torch.Tensor]:
    """Forward+backward one row at a time (gradient accumulation), the same minibatch loss as packed."""
    normalizer = loss_fn.normalizer([tree])
    out = {}
    for node in loss_fn.nodes_in_loss(tree):
        lp = row_logprobs(model, tree, node)
        loss_fn.pack_loss([node], [lp], normalizer).loss.backward()
        out[node.id] = lp.detach()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-packed-tokens", type=int, default=4096)
    parser.add_argument("--dense-mask", action="store_true",
                        help="SDPA with the dense ancestor mask, not tree attention")
    args = parser.parse_args()

    model, _ = load_model(args.model, dtype="float32", device="cpu")
    if not args.dense_mask:
        use_tree_attention(model)  # per-node rows carry no tree layout: they run plain SDPA either way
    model.train()
    tree = synthetic_tree(vocab=model.config.vocab_size)
    loss_fn = PolicyLoss(LossConfig())
    with torch.no_grad():  # the rollout's stored log-probs: ratio 1 on the first update, as in the paper
        for nid, lp in tree_logprobs(model, tree, temperature=TEMPERATURE,
                                     max_packed_tokens=args.max_packed_tokens).items():
            tree.node(nid).logprobs = lp.tolist()

    unique, row_tokens = len(tree.prompt_token_ids) + tree.unique_tokens, 0
    for n in tree.nodes[1:]:
        row_tokens += len(tree.prompt_token_ids) + len(tree.path_token_ids(n.id))
    print(f"tree: {len(tree.leaves())} leaves, depth {max(n.depth for n in tree.nodes)}, {len(tree.nodes) - 1} nodes; "
          f"packed tokens {unique}, per-node row tokens {row_tokens}, unique-token ratio {row_tokens / unique:.2f}x")
    print(f"packed attention: {'dense ancestor mask (SDPA)' if args.dense_mask else 'tree attention'}")
    print(f"threads {torch.get_num_threads()}; machine shared with other jobs: times are medians of {args.repeats}")

    packed_times, row_times = [], []
    for r in range(args.repeats):
        model.zero_grad()
        t0 = time.perf_counter()
        accumulate_policy_gradient(model, [tree], loss_fn, temperature=TEMPERATURE,
                                   max_packed_tokens=args.max_packed_tokens)
        packed_times.append(time.perf_counter() - t0)
        packed_grad = [p.grad.clone() for p in model.parameters() if p.grad is not None]

        model.zero_grad()
        t0 = time.perf_counter()
        rows = per_node_step(model, tree, loss_fn)
        row_times.append(time.perf_counter() - t0)
        row_grad = [p.grad for p in model.parameters() if p.grad is not None]
        print(f"repeat {r + 1}: packed {packed_times[-1]:.2f}s  per-node rows {row_times[-1]:.2f}s", flush=True)

    with torch.no_grad():
        packed = tree_logprobs(model, tree, temperature=TEMPERATURE, max_packed_tokens=args.max_packed_tokens)
    max_abs_diff = max(float((packed[k] - rows[k]).abs().max()) for k in rows)
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(packed_grad, row_grad))
    packed_s, row_s = statistics.median(packed_times), statistics.median(row_times)
    print(f"median forward+backward: packed {packed_s:.2f}s, per-node rows {row_s:.2f}s; "
          f"max grad diff {grad_diff:.2e}")
    print(f"speedup={row_s / packed_s:.2f} max_abs_diff={max_abs_diff:.2e}")


if __name__ == "__main__":
    main()
