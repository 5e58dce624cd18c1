"""Where a tree branches (paper section 3.2), as pure decisions the engine asks while it decodes.

- forced split: before the first token the root gets two depth-1 children with distinct first tokens;
- regular split: once the first token after a delimiter is sampled, a node whose own segment is at least
  `l_min` tokens, at depth < `max_depth`, with top-`entropy_top` entropy >= `h_th` there, ends at the
  delimiter and gets two children (the engine draws the second child's first token);
- coverage split: after growth, each leaf longer than `s_min` gives its parent one extra child, at most
  four children per branch point;
- budgets (`max_leaves`, `max_tree_tokens`, and `max_new_tokens` per path) stop branching; `Budget`
  remembers which one did, for `Tree.info["budget_hit"]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import TreeConfig
from ..types import Tree

MAX_CHILDREN = 4  # a branch point holds at most four children (two from its split, up to two coverage)

# budget names as they appear in Tree.info["budget_hit"]
MAX_LEAVES = "max_leaves"
MAX_TREE_TOKENS = "max_tree_tokens"
MAX_NEW_TOKENS = "max_new_tokens"


@dataclass
class Budget:
    """Per-tree counters the branching rules read: leaves that exist (growing or finished) and unique tokens."""

    cfg: TreeConfig
    leaves: int = 0
    tokens: int = 0
    hits: list[str] = field(default_factory=list)  # budgets that stopped something, in the order first hit

    def hit(self, name: str) -> None:
        if name not in self.hits:
            self.hits.append(name)

    def allows_new_leaf(self) -> bool:
        """One more leaf (a split turns one leaf into two; a coverage child adds one). Records a refusal."""
        if self.leaves + 1 > self.cfg.max_leaves:
            self.hit(MAX_LEAVES)
            return False
        if self.tokens >= self.cfg.max_tree_tokens:
            self.hit(MAX_TREE_TOKENS)
            return False
        return True

    @property
    def first_hit(self) -> str | None:
        return self.hits[0] if self.hits else None


def regular_split_wanted(cfg: TreeConfig, *, after_delimiter: bool, segment_len: int, depth: int,
                         entropy: float) -> bool:
    """The paper's regular-split rule, budgets aside. `segment_len` counts the node's own tokens before the
    token just sampled (the node would end at the delimiter); `depth` is the node's depth (root 0)."""
    return after_delimiter and segment_len >= cfg.l_min and depth < cfg.max_depth and entropy >= cfg.h_th


def coverage_parents(tree: Tree, cfg: TreeConfig, budget: Budget) -> list[int]:
    """Parents that get one coverage child each, one entry per qualifying leaf (so a parent may appear
    twice). A leaf qualifies when its own segment is longer than `s_min`; coverage children themselves never
    qualify (they are added after growth and grow no further). Leaves are taken in id order; the four-child
    cap and the leaf and token budgets are applied as children are granted, and `budget` is updated."""
    children: dict[int, int] = {}
    for n in tree.nodes:
        if n.parent is not None:
            children[n.parent] = children.get(n.parent, 0) + 1
    granted = []
    for leaf in tree.leaves():
        if leaf.kind == "coverage" or len(leaf.token_ids) <= cfg.s_min:
            continue
        if children[leaf.parent] >= MAX_CHILDREN:
            continue
        if not budget.allows_new_leaf():
            break
        children[leaf.parent] += 1
        budget.leaves += 1
        granted.append(leaf.parent)
    return granted
