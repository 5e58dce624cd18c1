"""One forward per tree: every node's tokens once, an ancestor attention mask, position ids along each path.

A tree of segments is laid out as one sequence: the prompt, then the nodes in depth-first order (ancestors
before descendants). A token may attend to the prompt, its ancestors' tokens and its own segment's earlier
tokens, never to a sibling's branch; its position id is its offset along its own root-to-node path. The
model therefore sees, for each token, exactly the context it had when the token was sampled, and training
costs unique tokens instead of the sum over root-to-leaf paths (ARCHITECTURE.md, "Speed principles").

Trees bigger than `max_packed_tokens` are split into several packs; each pack carries the ancestors its
nodes need as context (those repeated ancestors yield no log-probs there). Log-probs are read off the
final hidden states chunk by chunk, each chunk recomputed in the backward pass, so the full-vocabulary
logits of a whole pack never sit in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from .logprobs import token_logprobs
from .tree_attention import NAME as TREE_ATTENTION
from .tree_attention import tree_layout
from .types import Tree

# Attention implementations that honour the tree, each with the input it takes (below). Tree attention
# (tree_attention.py, what the trainer switches SDPA models to) takes the per-segment layout. In
# transformers 5.24 `masking_utils._preprocess_mask_arguments` returns any 4-D mask (tensor or BlockMask)
# unchanged; SDPA passes it to `scaled_dot_product_attention` as `attn_mask` (bool: True = attend), the eager
# path *adds* it to the attention scores (a bool mask there would be silently wrong), and flex_attention takes
# a BlockMask. Others are refused: flash_attention_2/3 take no arbitrary mask and would silently attend
# across sibling branches.

# output-logit transforms some model families apply after lm_head; we apply lm_head ourselves, so a model
# with one of these would get wrong log-probs
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class PackingError(ValueError):
    pass


@dataclass
class Pack:
    """One packed sequence of a tree: the prompt, then `node_ids` (ancestors before descendants).

    `wanted` are the nodes whose log-probs this pack yields; the other nodes are context for them."""

    tree: Tree
    node_ids: list[int]
    wanted: list[int]
    input_ids: torch.Tensor  # [L] long
    position_ids: torch.Tensor  # [L] long: offset along the token's own root-to-node path
    slot: torch.Tensor  # [L] long: 0 for the prompt, k for node_ids[k-1]
    slot_visible: torch.Tensor  # [S, S] bool: slot b is slot a itself or one of its ancestors (S = nodes + 1)
    spans: dict[int, tuple[int, int]]  # node id -> [start, end) in the pack
    predictors: dict[int, torch.Tensor]  # node id -> [len(tokens)] positions whose logits predict its tokens

    def __len__(self) -> int:
        return int(self.input_ids.numel())


# -- layout ----------------------------------------------------------------------------------------


def dfs_order(tree: Tree) -> list[int]:
    """Non-root node ids in depth-first pre-order, so every node comes after its ancestors and a subtree's
    nodes sit together (packs split along subtrees, sharing fewer ancestors)."""
    children: dict[int, list[int]] = {}
    for n in tree.nodes:
        if n.parent is not None:
            children.setdefault(n.parent, []).append(n.id)
    order, stack = [], list(reversed(children.get(0, [])))
    while stack:
        nid = stack.pop()
        order.append(nid)
        stack.extend(reversed(children.get(nid, [])))
    return order


def plan_packs(tree: Tree, wanted: list[int], max_packed_tokens: int) -> list[list[int]]:
    """Split the wanted nodes into groups whose pack (prompt + the nodes + their ancestors) fits
    `max_packed_tokens`. Greedy in depth-first order: a node joins the current pack when its missing
    ancestors and itself still fit, else it starts a new pack."""
    wanted_set = set(wanted)
    groups: list[list[int]] = []
    group: list[int] = []
    members: set[int] = set()
    size = len(tree.prompt_token_ids)
    for nid in dfs_order(tree):
        if nid not in wanted_set:
            continue
        path = [n.id for n in tree.path(nid)]
        path_len = len(tree.prompt_token_ids) + sum(len(tree.node(p).token_ids) for p in path)
        if path_len > max_packed_tokens:
            raise PackingError(
                f"tree {tree.prompt_id}, node {nid}: its prompt and path hold {path_len} tokens, more than "
                f"train.max_packed_tokens={max_packed_tokens}; raise train.max_packed_tokens")
        extra = sum(len(tree.node(p).token_ids) for p in path if p not in members)
        if group and size + extra > max_packed_tokens:
            groups.append(group)
            group, members, size = [], set(), len(tree.prompt_token_ids)
            extra = path_len - size
        group.append(nid)
        members.update(path)
        size += extra
    if group:
        groups.append(group)
    return groups


def build_pack(tree: Tree, wanted: list[int]) -> Pack:
    """The packed sequence for `wanted` node ids and their ancestors."""
    if not tree.prompt_token_ids:
        raise PackingError(f"tree {tree.prompt_id}: empty prompt; the first token needs a context to be predicted")
    included = {a.id for nid in wanted for a in tree.path(nid)}
    node_ids = [nid for nid in dfs_order(tree) if nid in included]
    slot_of = {0: 0} | {nid: k for k, nid in enumerate(node_ids, start=1)}  # the root's slot is the prompt
    n_slots = len(node_ids) + 1

    prompt = list(tree.prompt_token_ids)
    ids, positions, slots = list(prompt), list(range(len(prompt))), [0] * len(prompt)
    path_end = {0: len(prompt)}  # slot -> path length (tokens) through its end
    last_pos = {0: len(prompt) - 1}  # slot -> pack position of the last token on its path
    spans, predictors = {}, {}
    visible = torch.zeros(n_slots, n_slots, dtype=torch.bool)
    visible[0, 0] = True
    for nid in node_ids:
        node, s = tree.node(nid), slot_of[nid]
        ps = slot_of[node.parent]
        visible[s] = visible[ps]
        visible[s, s] = True
        start, k = len(ids), len(node.token_ids)
        ids += node.token_ids
        positions += range(path_end[ps], path_end[ps] + k)
        slots += [s] * k
        path_end[s] = path_end[ps] + k
        spans[nid] = (start, start + k)
        # token i of the node is predicted by the logits of the token before it on its path
        predictors[nid] = torch.tensor([last_pos[ps]] + list(range(start, start + k - 1)), dtype=torch.long)[:k]
        last_pos[s] = start + k - 1 if k else last_pos[ps]
    return Pack(tree=tree, node_ids=node_ids, wanted=list(wanted), input_ids=torch.tensor(ids, dtype=torch.long),
                position_ids=torch.tensor(positions, dtype=torch.long), slot=torch.tensor(slots, dtype=torch.long),
                slot_visible=visible, spans=spans, predictors=predictors)


def ancestor_mask(slot: torch.Tensor, slot_visible: torch.Tensor) -> torch.Tensor:
    """slot [L], slot_visible [S, S] -> mask [L, L] bool, True where query i may attend to key j: j's
    segment is i's own or one of its ancestors (the prompt included), and j is not after i. Ancestors
    precede descendants in the pack, so the causal condition only bites inside a segment."""
    n = slot.numel()
    causal = torch.ones(n, n, dtype=torch.bool, device=slot.device).tril()
    return slot_visible.to(slot.device)[slot[:, None], slot[None, :]] & causal


def sdpa_mask(slot: torch.Tensor, slot_visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return ancestor_mask(slot, slot_visible)[None, None]  # [1, 1, L, L] bool, True = attend


def eager_mask(slot: torch.Tensor, slot_visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = ancestor_mask(slot, slot_visible)
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill(~mask, torch.finfo(dtype).min)[None, None]  # [1, 1, L, L], 0 = attend


def flex_block_mask(slot: torch.Tensor, slot_visible: torch.Tensor, dtype: torch.dtype):
    """A BlockMask evaluated from the slots block by block: memory linear in the pack, no [L, L] tensor.
    (flex_attention compiles its kernel; use it on a GPU, it is very slow to compile on CPU.)"""
    from torch.nn.attention.flex_attention import create_block_mask

    visible = slot_visible.to(slot.device)

    def mask_mod(batch, head, q, kv):
        return visible[slot[q], slot[kv]] & (kv <= q)

    n = slot.numel()
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device=slot.device)


def tree_inputs(slot: torch.Tensor, slot_visible: torch.Tensor, dtype: torch.dtype) -> dict:
    """For tree attention (tree_attention.py): each segment attends to its own path's keys, given by the layout.
    The 4-D placeholder mask makes transformers skip building a mask of its own: the position ids of a pack
    restart along branches, and an [L, L] mask from them would be both wrong and the cost we avoid."""
    placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=slot.device)
    return {"attention_mask": placeholder, "tree_layout": tree_layout(slot, slot_visible)}


MASK_FORMS = {"sdpa": sdpa_mask, "eager": eager_mask, "flex_attention": flex_block_mask}


def attention_inputs(model, slot: torch.Tensor, slot_visible: torch.Tensor, dtype: torch.dtype) -> dict:
    """The keyword arguments that make the model's attention honour the ancestor mask: tree attention's
    layout, or the mask in the form the model's implementation takes; refuses the implementations that
    would ignore it."""
    impl = _unwrap(model).config._attn_implementation
    if impl == TREE_ATTENTION:
        return tree_inputs(slot, slot_visible, dtype)
    if impl not in MASK_FORMS:
        raise PackingError(
            f"attn_implementation={impl!r} cannot take the tree's 4-D ancestor mask (it would attend across "
            f"sibling branches); load the model with model.attn_implementation set to one of {', '.join(MASK_FORMS)}")
    return {"attention_mask": MASK_FORMS[impl](slot, slot_visible, dtype)}


# -- forward ---------------------------------------------------------------------------------------


def _unwrap(model):
    """The transformers model inside a DDP / accelerate wrapper (they keep it in `.module`)."""
    return getattr(model, "module", model)


def final_hidden_states(model, input_ids: torch.Tensor, attention: dict, position_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [L], attention (from `attention_inputs`), position_ids [L] -> hidden [L, H] (after the final
    norm).

    The call goes through `model` itself, not its inner base model, so a DDP wrapper's forward still runs
    and registers the gradient hooks; `logits_to_keep=1` keeps its own lm_head to a single row, and a
    forward hook on the base model hands us the hidden states."""
    inner = _unwrap(model)
    for key in _LOGIT_TRANSFORMS:
        if getattr(inner.config, key, None) not in (None, 0, 0.0, 1, 1.0):
            raise PackingError(f"model type {inner.config.model_type!r} transforms its logits ({key}); the packed "
                               "forward applies lm_head itself and does not support it")
    captured = []
    handle = inner.base_model.register_forward_hook(lambda mod, args, out: captured.append(out.last_hidden_state))
    try:
        model(input_ids=input_ids[None], position_ids=position_ids[None], use_cache=False, logits_to_keep=1,
              **attention)
    finally:
        handle.remove()
    return captured[0][0]


def _logprobs_chunk(lm_head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    return token_logprobs(lm_head(hidden), targets, temperature)  # [C, H] -> [C, V] -> [C]


def chunked_logprobs(lm_head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                     chunk_size: int = 512) -> torch.Tensor:
    """hidden [N, H], targets [N] -> log-probs [N] (float32), `chunk_size` rows of logits at a time. With
    autograd on, each chunk is checkpointed: only its hidden rows and log-probs are kept, and its logits are
    recomputed in the backward pass, so no more than one chunk of vocabulary-wide logits lives at once."""
    out = []
    for s in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[s:s + chunk_size], targets[s:s + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            out.append(checkpoint(_logprobs_chunk, lm_head, h, t, temperature, use_reentrant=False))
        else:
            out.append(_logprobs_chunk(lm_head, h, t, temperature))
    if not out:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(out)


def pack_logprobs(model, pack: Pack, *, temperature: float, chunk_size: int = 512) -> dict[int, torch.Tensor]:
    """Forward one pack -> {node id: log-probs [len(node.token_ids)]} for the pack's wanted nodes."""
    inner = _unwrap(model)
    device = next(inner.parameters()).device
    dtype = next(inner.parameters()).dtype
    attention = attention_inputs(model, pack.slot.to(device), pack.slot_visible, dtype)
    input_ids = pack.input_ids.to(device)
    hidden = final_hidden_states(model, input_ids, attention, pack.position_ids.to(device))  # [L, H]
    rows = torch.cat([pack.predictors[nid] for nid in pack.wanted]).to(device)  # [N]
    targets = torch.cat([input_ids[slice(*pack.spans[nid])] for nid in pack.wanted])  # [N]
    logp = chunked_logprobs(inner.get_output_embeddings(), hidden[rows], targets, temperature, chunk_size)
    lengths = [pack.spans[nid][1] - pack.spans[nid][0] for nid in pack.wanted]
    return dict(zip(pack.wanted, logp.split(lengths)))


def iter_packs(tree: Tree, wanted: list[int], max_packed_tokens: int):
    for group in plan_packs(tree, wanted, max_packed_tokens):
        yield build_pack(tree, group)


def tree_logprobs(model, tree: Tree, *, temperature: float, max_packed_tokens: int) -> dict[int, torch.Tensor]:
    """{node id: log-probs [len(node.token_ids)]} for every non-root node with tokens, under `model`, with
    gradients flowing when autograd is on (every pack's graph is kept; use the loss's per-pack backward
    to bound memory)."""
    wanted = [n.id for n in tree.nodes if n.parent is not None and n.token_ids]
    out: dict[int, torch.Tensor] = {}
    for pack in iter_packs(tree, wanted, max_packed_tokens):
        out.update(pack_logprobs(model, pack, temperature=temperature))
    return out
