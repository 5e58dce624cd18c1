"""Leaf verdicts -> node rewards -> sibling-relative advantages (paper section 3.1), and the tree metrics.

- a leaf's reward is 1.0 for PASS, else 0.0;
- an interior node's reward is the mean reward of the leaves below it (not the mean of its children);
- a node's advantage is its reward minus the mean reward of its siblings, itself included; no division by
  the standard deviation (the paper's choice, as Dr. GRPO);
- ERROR and TIMEOUT leaves follow `loss.on_error`: `fail` scores them 0.0; `drop` leaves them out of every
  mean, and a node with no remaining leaf below it gets reward and advantage None (the loss skips it).
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean

from .types import Tree, Verdict

ON_ERROR = ("fail", "drop")
NOT_JUDGED = (Verdict.ERROR, Verdict.TIMEOUT)


def leaf_reward(verdict: Verdict, on_error: str) -> float | None:
    """None when the leaf is dropped from the means."""
    if verdict in NOT_JUDGED and on_error == "drop":
        return None
    return 1.0 if verdict is Verdict.PASS else 0.0


def assign_rewards(tree: Tree, on_error: str = "fail") -> None:
    """Fill `reward` and `advantage` of every node in place. Leaves must carry a verdict.
    The root gets the mean leaf reward and advantage 0.0 (None when no leaf counts); it holds no tokens."""
    if on_error not in ON_ERROR:
        raise ValueError(f"loss.on_error must be one of {ON_ERROR}, got {on_error!r}")
    children = children_of(tree)
    # (sum, count) of the counted leaf rewards below each node, deepest nodes first
    totals: dict[int, tuple[float, int]] = {}
    for n in sorted(tree.nodes, key=lambda n: -n.depth):
        if not children[n.id] and n.parent is not None:
            if n.verdict is None:
                raise ValueError(f"tree {tree.prompt_id}: leaf node {n.id} has no verdict; verify leaves first")
            r = leaf_reward(n.verdict, on_error)
            totals[n.id] = (r, 1) if r is not None else (0.0, 0)
        else:
            parts = [totals[c] for c in children[n.id]]
            totals[n.id] = (sum(s for s, _ in parts), sum(c for _, c in parts))
    for n in tree.nodes:
        s, c = totals[n.id]
        n.reward = s / c if c else None
    for n in tree.nodes:
        if n.parent is None:
            n.advantage = 0.0 if n.reward is not None else None
            continue
        siblings = [tree.node(i).reward for i in children[n.parent]]
        counted = [r for r in siblings if r is not None]
        n.advantage = n.reward - fmean(counted) if n.reward is not None else None


def tree_metrics(trees: list[Tree]) -> dict[str, float]:
    """The ARCHITECTURE.md metric keys that come from trees. Per-tree values averaged over trees (each
    prompt weighs the same), except `frac_zero_var_groups`, pooled over all sibling groups.
    `tree/nodes` counts segments (the root excluded); `splits/*` count branch points per tree
    (a regular split is one branch point with two children; each coverage child is one)."""
    if not trees:
        return {}
    per_tree: dict[str, list[float]] = defaultdict(list)
    groups = zero_groups = 0
    for tree in trees:
        leaves = tree.leaves()
        judged = [n for n in leaves if n.verdict is not None]
        if judged:
            for v in Verdict:
                per_tree[f"verdict/{v.value.lower()}"].append(sum(n.verdict is v for n in judged) / len(judged))
            if any(n.reward is not None for n in tree.nodes):  # rewards assigned: dropped leaves stay out
                rewards = [n.reward for n in judged if n.reward is not None]
            else:  # not yet assigned: read verdicts as `fail` would
                rewards = [leaf_reward(n.verdict, "fail") for n in judged]
            if rewards:
                per_tree["reward_mean"].append(fmean(rewards))
        if tree.info.get("entropy_mean") is not None:
            per_tree["entropy"].append(tree.info["entropy_mean"])
        per_tree["tree/nodes"].append(len(tree.nodes) - 1)
        per_tree["tree/leaves"].append(len(leaves))
        depths = [n.depth for n in leaves] or [0]
        per_tree["tree/depth_max"].append(max(depths))
        per_tree["tree/depth_mean"].append(fmean(depths))
        kinds = [n.kind for n in tree.nodes]
        per_tree["splits/forced"].append(1.0 if "forced" in kinds else 0.0)
        per_tree["splits/entropy"].append(kinds.count("entropy") / 2)
        per_tree["splits/coverage"].append(kinds.count("coverage"))
        per_tree["tokens/unique"].append(tree.unique_tokens)
        per_tree["tokens/path_sum"].append(tree.path_token_sum)
        for ids in children_of(tree).values():
            advantages = [tree.node(i).advantage for i in ids]
            advantages = [a for a in advantages if a is not None]
            if len(advantages) >= 2:
                groups += 1
                zero_groups += all(a == 0.0 for a in advantages)
    out = {k: float(fmean(v)) for k, v in per_tree.items()}
    if groups:
        out["frac_zero_var_groups"] = zero_groups / groups
    return out


def children_of(tree: Tree) -> dict[int, list[int]]:
    """Node id -> ids of its children (empty list for leaves)."""
    children: dict[int, list[int]] = defaultdict(list)
    for n in tree.nodes:
        if n.parent is not None:
            children[n.parent].append(n.id)
    return children
