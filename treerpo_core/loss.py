"""The TreeRPO policy loss: a PPO-clipped surrogate on each node's advantage, no critic, no KL (β = 0).

Paper section 3.1.3 treats a node's whole segment as one action with one importance ratio. We default to
per-token ratios that all carry their node's advantage (`loss.ratio=token`), as the paper's public code and
GRPO practice do: a per-token ratio clips exactly the tokens that moved too far instead of silencing a
whole 150-token segment because of a few of them. `loss.ratio=node` is the literal form, with the node's
ratio taken as the geometric mean of its token ratios (the ratio of the segment's probabilities, per token).

Both variants reduce to "units" (tokens or nodes), each with a ratio, an advantage and a weight, so the
surrogate and the aggregation are written once:

    loss = sum_u weight_u * surrogate_u / normalizer

The aggregator (chosen once, by name) supplies each token's weight inside its node and the minibatch
normalizer; a node unit's weight is the sum of its tokens' weights.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from .config import LossConfig
from .packing import build_pack, pack_logprobs, plan_packs
from .types import Node, Tree


# -- the surrogate ---------------------------------------------------------------------------------


def clipped_surrogate(ratio: torch.Tensor, advantage: torch.Tensor, eps_low: float,
                      eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ratio [U], advantage [U] -> (loss [U], clipped [U] bool).

    loss = -min(ρA, clip(ρ, 1-eps_low, 1+eps_high)A). `clipped` marks the units where the clipped term won
    the min and differs from the unclipped one, i.e. where clipping stopped the gradient (ρ above 1+eps_high
    with A > 0, or below 1-eps_low with A < 0)."""
    unclipped = ratio * advantage
    clipped_term = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantage
    loss = -torch.minimum(unclipped, clipped_term)
    clipped = clipped_term < unclipped
    return loss, clipped


# -- ratios: tokens or nodes as units --------------------------------------------------------------


@dataclass
class Units:
    """What the surrogate acts on for one pack: U units (tokens or nodes)."""

    ratio: torch.Tensor  # [U]
    advantage: torch.Tensor  # [U]
    weight: torch.Tensor  # [U] aggregator weight (before dividing by the normalizer)


def token_units(log_ratio: torch.Tensor, advantage: torch.Tensor, weight: torch.Tensor,
                node_index: torch.Tensor, n_nodes: int) -> Units:
    """Per-token ratios (the default). log_ratio, advantage, weight, node_index: [T] -> T units."""
    return Units(ratio=log_ratio.exp(), advantage=advantage, weight=weight)


def node_units(log_ratio: torch.Tensor, advantage: torch.Tensor, weight: torch.Tensor,
               node_index: torch.Tensor, n_nodes: int) -> Units:
    """One ratio per node (paper section 3.1.3): exp(mean of the node's token log-ratios), the geometric
    mean of its token ratios. Inputs [T] with node_index in [0, n_nodes) -> n_nodes units."""
    zeros = torch.zeros(n_nodes, dtype=log_ratio.dtype, device=log_ratio.device)
    counts = zeros.index_add(0, node_index, torch.ones_like(log_ratio))
    mean_log_ratio = zeros.index_add(0, node_index, log_ratio) / counts
    node_adv = zeros.index_add(0, node_index, advantage) / counts  # every token carries the node's advantage
    node_weight = zeros.index_add(0, node_index, weight.to(log_ratio.dtype))
    return Units(ratio=mean_log_ratio.exp(), advantage=node_adv, weight=node_weight)


RATIOS: dict[str, Callable[..., Units]] = {"token": token_units, "node": node_units}


# -- aggregators -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregator:
    """How unit losses combine into one minibatch loss.

    token_weight(length) is the weight of each token of a node with `length` tokens; normalizer(lengths,
    n_trees, max_new_tokens) divides the weighted sum, over the whole minibatch (`lengths`: one entry per
    node that enters the loss)."""

    token_weight: Callable[[int], float]
    normalizer: Callable[[list[int], int, int], float]


AGGREGATORS: dict[str, Aggregator] = {
    # every token in the minibatch counts the same
    "token_mean": Aggregator(token_weight=lambda length: 1.0,
                             normalizer=lambda lengths, n_trees, max_new: float(sum(lengths))),
    # every node counts the same, whatever its length (the paper's 1/|nodes| average)
    "node_mean": Aggregator(token_weight=lambda length: 1.0 / length,
                            normalizer=lambda lengths, n_trees, max_new: float(len(lengths))),
    # Dr. GRPO: a constant normaliser (max_new_tokens per prompt), so no token's weight depends on how
    # long the other completions were. Per tree rather than per path: a tree is one prompt's group.
    "constant": Aggregator(token_weight=lambda length: 1.0,
                           normalizer=lambda lengths, n_trees, max_new: float(n_trees * max_new)),
}


# -- the policy loss over trees --------------------------------------------------------------------


@dataclass
class PackLoss:
    """One pack's share of the minibatch loss and the counts the metrics need."""

    loss: torch.Tensor  # scalar, already divided by the minibatch normalizer
    units: int
    clipped: int
    ratio_sum: float
    tokens: int


class PolicyLoss:
    """The configured loss, with its ratio mode and aggregator chosen once (never an if inside the loss)."""

    def __init__(self, cfg: LossConfig, *, max_new_tokens: int = 1024):
        if cfg.ratio not in RATIOS:
            raise ValueError(f"loss.ratio={cfg.ratio!r} is not one of {', '.join(RATIOS)}")
        if cfg.aggregate not in AGGREGATORS:
            raise ValueError(f"loss.aggregate={cfg.aggregate!r} is not one of {', '.join(AGGREGATORS)}")
        self.cfg = cfg
        self.max_new_tokens = max_new_tokens
        self.make_units = RATIOS[cfg.ratio]
        self.aggregator = AGGREGATORS[cfg.aggregate]

    def nodes_in_loss(self, tree: Tree) -> list[Node]:
        """Non-root nodes with tokens and an advantage. Advantage None means the node was left out
        upstream (loss.on_error=drop); with loss.drop_zero_advantage, advantage 0 is left out too."""
        out = []
        for n in tree.nodes:
            if n.parent is None or not n.token_ids or n.advantage is None:
                continue
            if self.cfg.drop_zero_advantage and n.advantage == 0.0:
                continue
            if len(n.logprobs) != len(n.token_ids):
                raise ValueError(f"tree {tree.prompt_id}, node {n.id}: {len(n.logprobs)} rollout log-probs for "
                                 f"{len(n.token_ids)} tokens; the loss needs one old log-prob per token")
            out.append(n)
        return out

    def normalizer(self, trees: list[Tree]) -> float:
        lengths = [len(n.token_ids) for t in trees for n in self.nodes_in_loss(t)]
        if not lengths:
            return 0.0
        return self.aggregator.normalizer(lengths, len(trees), self.max_new_tokens)

    def pack_loss(self, nodes: list[Node], new_logprobs: list[torch.Tensor], normalizer: float) -> PackLoss:
        """nodes (K, all in the loss) with their new log-probs [len(node.token_ids)] each -> this pack's
        share of the minibatch loss (sum_u weight_u * surrogate_u / normalizer)."""
        new = torch.cat(new_logprobs)  # [T]
        device = new.device
        old = torch.tensor([lp for n in nodes for lp in n.logprobs], dtype=new.dtype, device=device)  # [T]
        lengths = [len(n.token_ids) for n in nodes]
        advantage = torch.tensor([n.advantage for n, k in zip(nodes, lengths) for _ in range(k)],
                                 dtype=new.dtype, device=device)  # [T]
        weight = torch.tensor([self.aggregator.token_weight(k) for k in lengths for _ in range(k)],
                              dtype=new.dtype, device=device)  # [T]
        node_index = torch.repeat_interleave(torch.arange(len(nodes), device=device),
                                             torch.tensor(lengths, device=device))  # [T]
        units = self.make_units(new - old, advantage, weight, node_index, len(nodes))
        loss, clipped = clipped_surrogate(units.ratio, units.advantage, self.cfg.eps_low, self.cfg.eps_high)
        return PackLoss(loss=(units.weight * loss).sum() / normalizer, units=int(loss.numel()),
                        clipped=int(clipped.sum()), ratio_sum=float(units.ratio.detach().sum()),
                        tokens=int(new.numel()))


# -- one minibatch's gradient, pack by pack --------------------------------------------------------


def accumulate_policy_gradient(model, trees: list[Tree], policy_loss: PolicyLoss, *, temperature: float,
                               max_packed_tokens: int, backward: Callable[[torch.Tensor], None] = lambda t: t.backward(),
                               no_sync: Callable[[], ContextManager] | None = None) -> dict:
    """Forward each pack of each tree, compute its share of the minibatch loss (divided by the minibatch
    normalizer, so the shares sum to the full loss) and call `backward(share)` at once, so memory stays
    bounded by one pack whatever the minibatch holds.

    `no_sync` (e.g. `lambda: accelerator.no_sync(model)` under DDP): every pack but the last runs inside it,
    so gradients are all-reduced once per minibatch, and each rank all-reduces exactly once whatever its
    number of packs. Returns python floats: loss, clip_ratio (fraction of units, tokens or nodes, where
    clipping was active), tokens (in the loss), ratio_mean (over units), packs. A minibatch where no node
    enters the loss returns loss 0.0 and calls backward on nothing."""
    stats = {"loss": 0.0, "clip_ratio": 0.0, "tokens": 0, "ratio_mean": 0.0, "packs": 0}
    normalizer = policy_loss.normalizer(trees)
    if normalizer == 0.0:
        return stats
    plan = []  # (tree, node ids of one pack)
    for tree in trees:
        wanted = [n.id for n in policy_loss.nodes_in_loss(tree)]
        if wanted:
            plan += [(tree, group) for group in plan_packs(tree, wanted, max_packed_tokens)]
    units = clipped = 0
    ratio_sum = 0.0
    for i, (tree, group) in enumerate(plan):
        context = no_sync() if no_sync is not None and i < len(plan) - 1 else nullcontext()
        with context:
            new = pack_logprobs(model, build_pack(tree, group), temperature=temperature)
            share = policy_loss.pack_loss([tree.node(nid) for nid in group], [new[nid] for nid in group], normalizer)
            backward(share.loss)
        stats["loss"] += float(share.loss.detach())
        stats["tokens"] += share.tokens
        units, clipped, ratio_sum = units + share.units, clipped + share.clipped, ratio_sum + share.ratio_sum
    stats.update(clip_ratio=clipped / units, ratio_mean=ratio_sum / units, packs=len(plan))
    return stats
