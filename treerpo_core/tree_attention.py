"""Attention for a packed tree at the cost of its paths, not of the pack's square.

In a packed tree (packing.py) a token sees only its own segment's earlier tokens and its ancestors' tokens.
SDPA with the dense [L, L] ancestor mask is exact but computes every query against every key of the pack and
throws most of it away: for a 16-leaf tree on a CPU the masked-out scores were about as costly as the whole
MLP. Here each segment's queries attend to the keys of its own path only (one `scaled_dot_product_attention`
call per segment, keys gathered by index), so attention costs the sum over segments of segment length times
path length: what generating the tree cost, and nothing for sibling branches.

The function is registered with transformers' `AttentionInterface` under `NAME`; `use_tree_attention(model)`
switches a model loaded with `sdpa` to it. Called without a `tree_layout` keyword (generation, evaluation,
anything but the packed forward) it is transformers' own SDPA path, masks included, so the switched model
behaves exactly as before everywhere else. The name lives in the process only: `save_pretrained` does not
write it, and checkpoints load as plain models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "treerpo_tree"


class TreeLayoutError(ValueError):
    pass


@dataclass
class Segment:
    start: int  # the segment's queries are pack positions [start, end)
    end: int
    keys: torch.Tensor  # [P] long: the pack positions it may attend to, ascending; its own span comes last
    mask: torch.Tensor | None  # [end - start, P] bool, True = attend; None when plain causal (P == end - start)


@dataclass
class TreeLayout:
    segments: list[Segment]
    length: int


def tree_layout(slot: torch.Tensor, slot_visible: torch.Tensor) -> TreeLayout:
    """slot [L] (each position's segment), slot_visible [S, S] (segment a may see segment b) -> the per-segment
    key sets. Requires what packing guarantees: each segment is one contiguous run, and every other segment it
    sees lies wholly before it, so within its keys the causal condition is bottom-right aligned."""
    slot_cpu, visible = slot.cpu(), slot_visible.cpu()
    n = slot_cpu.numel()
    boundaries = [0] + (torch.nonzero(slot_cpu[1:] != slot_cpu[:-1]).squeeze(1) + 1).tolist() + [n]
    runs = [(int(slot_cpu[start]), start, end) for start, end in zip(boundaries[:-1], boundaries[1:])]
    if len({s for s, _, _ in runs}) < len(runs):
        raise TreeLayoutError("a segment is split into several runs of the pack")
    segments = []
    for s, start, end in runs:
        keys = torch.nonzero(visible[s][slot_cpu]).squeeze(1)
        k, p = end - start, keys.numel()
        own = keys[p - k:] if p >= k else keys
        if p < k or not torch.equal(own, torch.arange(start, end)) or (p > k and int(keys[p - k - 1]) >= start):
            raise TreeLayoutError(f"segment {s} must see itself and only segments placed before it")
        mask = None if p == k else torch.arange(p)[None, :] <= torch.arange(p - k, p)[:, None]
        segments.append(Segment(start, end, keys.to(slot.device), None if mask is None else mask.to(slot.device)))
    return TreeLayout(segments=segments, length=n)


def _expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, H_kv, P, D] -> [B, H_kv * groups, P, D] for grouped-query attention (what SDPA's `enable_gqa` does,
    which not every device's kernel supports together with a mask)."""
    if groups == 1:
        return x
    b, h, p, d = x.shape
    return x[:, :, None].expand(b, h, groups, p, d).reshape(b, h * groups, p, d)


def tree_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                           dropout: float = 0.0, scaling: float | None = None, tree_layout: TreeLayout | None = None,
                           **kwargs):
    """transformers' attention-function signature: query [B, H, L, D], key/value [B, H_kv, L, D] ->
    ([B, L, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if tree_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1 or query.shape[2] != tree_layout.length:
        raise TreeLayoutError(f"tree attention takes one packed sequence of {tree_layout.length} tokens, got "
                              f"queries of shape {tuple(query.shape)}")
    groups = getattr(module, "num_key_value_groups", 1)
    outputs = []
    for seg in tree_layout.segments:
        k = _expand_kv(key.index_select(2, seg.keys), groups)
        v = _expand_kv(value.index_select(2, seg.keys), groups)
        outputs.append(F.scaled_dot_product_attention(query[:, :, seg.start:seg.end], k, v, attn_mask=seg.mask,
                                                      dropout_p=dropout, scale=scaling, is_causal=seg.mask is None))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `NAME` a valid attention implementation (idempotent): the function above, and for mask creation
    outside the packed forward, the same masks SDPA gets."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, tree_attention_forward)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_tree_attention(model) -> bool:
    """Switch a model running transformers' SDPA attention to tree attention; other implementations (eager,
    flex_attention, ...) are left as they are. Returns whether it switched."""
    inner = getattr(model, "module", model)
    if getattr(inner.config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    inner.set_attn_implementation(NAME)
    return True
