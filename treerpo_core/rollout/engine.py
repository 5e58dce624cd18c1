"""Grow TreeRPO trees (paper section 3.2) with a transformers causal LM, paying for unique tokens only.

How the cost follows unique tokens:
- every growing node of every prompt is one row of a single batched KV cache (transformers' `DynamicCache`),
  and all rows decode together, one forward per step;
- a split duplicates the row (`cache.batch_select_indices` with the row index repeated): both children
  continue from the parent's keys and values, nothing is re-read; a finished row is dropped the same way;
- prompts of different lengths are left-padded (attention mask + explicit position ids).

Coverage children (added after growth, section 3.2) re-prefill their parent's path in one batched forward
instead of keeping every branch point's cache: keeping them would hold one cache row per branch point for the
whole growth (up to `max_leaves` rows of up to `max_new_tokens` tokens), while a batched prefill is a single
forward that runs far faster per token than decoding. `Tree.info["prefill_tokens"]` counts what it read.

The engine only grows trees: verdicts, rewards and advantages are left None for the caller
(`rewards.assign_rewards`). Another engine (e.g. vLLM on a GPU) only needs the same `grow` signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..config import SamplingConfig, TreeConfig
from ..logprobs import token_logprobs, topk_entropy
from ..models import encode_prompt
from ..types import Example, Node, Tree
from . import branching, sampler


@dataclass
class _Row:
    """One growing node: which tree and node it extends, and the tokens sampled on its root-to-node path."""

    tree: int
    node: int
    path: list[int]  # generated tokens from the root down to here (prompt excluded)
    can_split: bool  # False for flat samples and coverage children


class _Batch:
    """The rows decoding together and their tensors; row i of every tensor is `rows[i]`."""

    def __init__(self, rows, cache, mask, pos, history):
        self.rows: list[_Row] = rows
        self.cache = cache  # the model's KV cache, batch dimension = rows
        self.mask = mask  # [B, S] 1 for real tokens, 0 for left padding
        self.pos = pos  # [B] position id of the next token to feed
        # [B, S] token ids on each row's sequence, prompt included (as transformers' generate), for the
        # repetition penalty; left padding repeats the row's first token so the pad id is not penalised
        self.history = history

    def select(self, index: list[int]) -> None:
        """Keep, drop or duplicate rows: row j becomes old row index[j]."""
        if not index or index == list(range(len(self.rows))):  # nothing left to decode, or nothing changed
            return
        idx = torch.tensor(index, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.pos, self.history = self.mask[idx], self.pos[idx], self.history[idx]


class TreeEngine:
    """Grows one tree per example with a transformers causal LM (or anything with the same forward)."""

    def __init__(self, model, tokenizer, *, tree: TreeConfig, sampling: SamplingConfig, delimiter=None):
        if tree.mode not in ("tree", "flat"):
            raise ValueError(f"tree.mode must be 'tree' or 'flat', got {tree.mode!r}")
        if tree.mode == "tree" and tree.max_leaves < 2:
            raise ValueError(f"tree.max_leaves must be at least 2 (the forced first split), got {tree.max_leaves}")
        if tree.mode == "flat" and tree.n_flat < 1:
            raise ValueError(f"tree.n_flat must be at least 1, got {tree.n_flat}")
        if sampling.temperature <= 0:
            raise ValueError(f"sampling.temperature must be > 0 for tree rollouts, got {sampling.temperature}")
        if sampling.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be at least 1, got {sampling.max_new_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.tree_cfg, self.sampling = tree, sampling
        self.device = next(model.parameters()).device
        self.delimiter_ids: set[int] | None = None  # built on the first step, when the logits' width is known
        self.allows_split = getattr(delimiter, "allows_split", None)
        self._delimiter = delimiter
        self.eos_ids = _eos_ids(model, tokenizer)
        params = inspect.signature(model.forward).parameters
        # transformers 5 calls the KV cache `cache`; earlier versions `past_key_values`
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._last_logits_only = "logits_to_keep" in params

    # -- public ----------------------------------------------------------------------------------
    def grow(self, examples: list[Example], *, seed: int, step: int | None = None) -> list[Tree]:
        """One tree per example. The same examples and seed give the same trees (one generator drives
        every draw, so a tree also depends on which examples share its batch)."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        trees = [Tree(prompt_id=ex.id, prompt_token_ids=encode_prompt(self.tokenizer, ex.prompt),
                      reference=ex.reference, step=step,
                      nodes=[Node(id=0, parent=None, depth=0, kind="root")]) for ex in examples]
        if not trees:
            return []
        budgets = [branching.Budget(self.tree_cfg) for _ in trees]
        stats = _Stats(len(trees))
        with torch.no_grad():
            if self.tree_cfg.mode == "flat":
                self._grow_flat(trees, budgets, stats, generator)
            else:
                self._grow_tree(trees, budgets, stats, generator)
                self._grow_coverage(trees, budgets, stats, generator)
        for i, (tree, budget) in enumerate(zip(trees, budgets)):
            for node in tree.nodes:
                node.text = self.tokenizer.decode(node.token_ids) if node.token_ids else ""
            tree.info.update({
                "budget_hit": budget.first_hit,
                "budgets_hit": list(budget.hits),
                "entropy_mean": stats.entropy_mean(i),
                "prefill_tokens": stats.prefill[i],
            })
        return trees

    # -- the three phases --------------------------------------------------------------------------
    def _grow_flat(self, trees, budgets, stats, generator):
        """GRPO baseline: `n_flat` independent samples per prompt, the prompt read once."""
        n = self.tree_cfg.n_flat
        batch, logits = self._prefill([t.prompt_token_ids for t in trees], list(range(len(trees))), stats)
        batch.rows = []
        for i, tree in enumerate(trees):
            for _ in range(n):
                tree.nodes.append(Node(id=len(tree.nodes), parent=0, depth=1, kind="sample"))
                batch.rows.append(_Row(tree=i, node=tree.nodes[-1].id, path=[], can_split=False))
            budgets[i].leaves = n
        index = [i for i in range(len(trees)) for _ in range(n)]
        batch.select(index)
        self._decode(batch, logits[index], trees, budgets, stats, generator)

    def _grow_tree(self, trees, budgets, stats, generator):
        """Forced first split, then decode with regular splits until every path has ended."""
        batch, logits = self._prefill([t.prompt_token_ids for t in trees], list(range(len(trees))), stats)
        next_ids = self._forced_split(batch, logits, trees, budgets, stats, generator)
        if batch.rows:
            logits = self._feed(batch, next_ids)
            self._decode(batch, logits, trees, budgets, stats, generator)

    def _grow_coverage(self, trees, budgets, stats, generator):
        """Coverage children (section 3.2): one extra child per long leaf's parent, grown without splits."""
        seqs, owners, rows = [], [], []
        for i, tree in enumerate(trees):
            for parent_id in branching.coverage_parents(tree, self.tree_cfg, budgets[i]):
                parent = tree.node(parent_id)
                child = Node(id=len(tree.nodes), parent=parent_id, depth=parent.depth + 1, kind="coverage")
                tree.nodes.append(child)
                path = tree.path_token_ids(parent_id)
                seqs.append(tree.prompt_token_ids + path)
                owners.append(i)
                rows.append(_Row(tree=i, node=child.id, path=path, can_split=False))
        if not seqs:
            return
        batch, logits = self._prefill(seqs, owners, stats)
        batch.rows = rows
        self._decode(batch, logits, trees, budgets, stats, generator)

    # -- decoding ----------------------------------------------------------------------------------
    def _forced_split(self, batch, logits, trees, budgets, stats, generator) -> list[int]:
        """Two depth-1 children per root with distinct first tokens; returns the tokens to feed."""
        probs, ids = sampler.candidates(logits, batch.history, self.sampling)
        first = sampler.draw(probs, ids, generator)
        second = sampler.draw_excluding(probs, ids, first, generator, logits / self.sampling.temperature)
        entropy = topk_entropy(logits, self.tree_cfg.entropy_top).tolist()
        lp1 = token_logprobs(logits, first, self.sampling.temperature).tolist()
        lp2 = token_logprobs(logits, second, self.sampling.temperature).tolist()
        first, second = first.tolist(), second.tolist()
        rows, index, next_ids = [], [], []
        for i, tree in enumerate(trees):
            tree.nodes[0].split_entropy = entropy[i]
            stats.add_entropy(i, entropy[i])
            budgets[i].leaves = 2
            for tok, lp in ((first[i], lp1[i]), (second[i], lp2[i])):
                node = Node(id=len(tree.nodes), parent=0, depth=1, kind="forced", token_ids=[tok], logprobs=[lp])
                tree.nodes.append(node)
                row = _Row(tree=i, node=node.id, path=[], can_split=True)
                if self._extend_done(row, tok, budgets[i]):
                    continue
                rows.append(row)
                index.append(i)
                next_ids.append(tok)
        batch.select(index)
        batch.rows = rows
        return next_ids

    def _decode(self, batch, logits, trees, budgets, stats, generator) -> None:
        """Sample, split, append and feed until every row has ended. `logits` [B, V] predict each row's next token."""
        cfg, temperature = self.tree_cfg, self.sampling.temperature
        while batch.rows:
            probs, ids = sampler.candidates(logits, batch.history, self.sampling)
            tokens = sampler.draw(probs, ids, generator)
            entropy = topk_entropy(logits, cfg.entropy_top)
            logps = token_logprobs(logits, tokens, temperature).tolist()
            after_delim = self._after_delimiter(batch, logits)
            tok_list, ent_list = tokens.tolist(), entropy.tolist()

            splits = []  # rows whose node ends here and gets two children
            for r, row in enumerate(batch.rows):
                stats.add_entropy(row.tree, ent_list[r])
                node = trees[row.tree].nodes[row.node]
                if (row.can_split and after_delim[r]
                        and branching.regular_split_wanted(cfg, after_delimiter=True, segment_len=len(node.token_ids),
                                                           depth=node.depth, entropy=ent_list[r])
                        and (self.allows_split is None or self.allows_split(list(row.path), tok_list[r]))
                        and budgets[row.tree].allows_new_leaf()):
                    budgets[row.tree].leaves += 1  # counted now, so a second split this step sees it
                    splits.append(r)
            alt_tokens, alt_logps = {}, {}
            if splits:
                sel = torch.tensor(splits, device=logits.device)
                alt = sampler.topk_alternative(logits[sel], tokens[sel], cfg.entropy_top, generator)
                alt_lp = token_logprobs(logits[sel], alt, temperature).tolist()
                alt_tokens = dict(zip(splits, alt.tolist()))
                alt_logps = dict(zip(splits, alt_lp))

            rows, index, next_ids = [], [], []
            for r, row in enumerate(batch.rows):
                tree, tok = trees[row.tree], tok_list[r]
                continuing = [(row, tok, logps[r])]
                if r in alt_tokens:
                    continuing = self._split(tree, row, tok, logps[r], alt_tokens[r], alt_logps[r], ent_list[r])
                else:
                    node = tree.nodes[row.node]
                    node.token_ids.append(tok)
                    node.logprobs.append(logps[r])
                for child_row, child_tok, _ in continuing:
                    if not self._extend_done(child_row, child_tok, budgets[row.tree]):
                        rows.append(child_row)
                        index.append(r)
                        next_ids.append(child_tok)
            batch.select(index)
            batch.rows = rows
            if rows:
                logits = self._feed(batch, next_ids)

    def _split(self, tree, row, tok, logp, alt, alt_logp, entropy):
        """Regular split (section 3.2): the node ends at the delimiter; one child starts with the sampled
        token, the other with the alternative drawn from the rest of the top-`entropy_top`."""
        parent = tree.nodes[row.node]
        parent.split_entropy = entropy
        out = []
        for t, lp in ((tok, logp), (alt, alt_logp)):
            child = Node(id=len(tree.nodes), parent=parent.id, depth=parent.depth + 1, kind="entropy",
                         token_ids=[t], logprobs=[lp])
            tree.nodes.append(child)
            out.append((_Row(tree=row.tree, node=child.id, path=list(row.path), can_split=True), t, lp))
        return out

    def _extend_done(self, row: _Row, tok: int, budget: branching.Budget) -> bool:
        """Account a token appended to the row's node; True when the row's path has ended."""
        row.path.append(tok)
        budget.tokens += 1
        if tok in self.eos_ids:
            return True
        if len(row.path) >= self.sampling.max_new_tokens:
            budget.hit(branching.MAX_NEW_TOKENS)
            return True
        return False

    def _after_delimiter(self, batch, logits) -> list[bool]:
        """Per row: does the path end with a delimiter token (so the token just sampled is the first after it)?"""
        if self._delimiter is None:
            return [False] * len(batch.rows)
        if self.delimiter_ids is None:
            mask = _fit_mask(self._delimiter.vocab_mask(self.tokenizer), logits.shape[-1])
            self.delimiter_ids = set(mask.nonzero().flatten().tolist())
        return [bool(row.path) and row.path[-1] in self.delimiter_ids for row in batch.rows]

    # -- model calls -------------------------------------------------------------------------------
    def _prefill(self, seqs: list[list[int]], owners: list[int], stats) -> tuple[_Batch, torch.Tensor]:
        """Left-padded batched forward over whole sequences -> a batch (rows unset) and last-position logits."""
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if not s:
                raise ValueError("cannot grow from an empty prompt")
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
            stats.prefill[owners[i]] += len(s)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(ids, mask, positions, None)
        history = torch.where(mask.bool(), ids, ids[:, -1:].expand_as(ids))  # pads repeat a real token
        return _Batch([], cache, mask, mask.sum(-1), history), logits

    def _feed(self, batch: _Batch, next_ids: list[int]) -> torch.Tensor:
        """Feed one token per row; returns logits [B, V] for the following token."""
        ids = torch.tensor(next_ids, dtype=torch.long, device=self.device)
        batch.history = torch.cat([batch.history, ids[:, None]], dim=1)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(next_ids), 1))], dim=1)
        logits, batch.cache = self._forward(ids[:, None], batch.mask, batch.pos[:, None], batch.cache)
        batch.pos = batch.pos + 1
        return logits

    def _forward(self, ids, mask, positions, cache):
        kwargs = {self._cache_arg: cache, "use_cache": True}
        if self._last_logits_only:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits[:, -1].float(), new_cache


class _Stats:
    """Per-tree running numbers for Tree.info."""

    def __init__(self, n: int):
        self.entropy_sum = [0.0] * n
        self.entropy_count = [0] * n
        self.prefill = [0] * n  # tokens read by prefills (prompts, coverage re-prefills)

    def add_entropy(self, i: int, value: float) -> None:
        self.entropy_sum[i] += value
        self.entropy_count[i] += 1

    def entropy_mean(self, i: int) -> float | None:
        return self.entropy_sum[i] / self.entropy_count[i] if self.entropy_count[i] else None


def _eos_ids(model, tokenizer) -> set[int]:
    """Tokens that end a path: the generation config's EOS ids and the tokenizer's."""
    ids = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _fit_mask(mask, width: int) -> torch.Tensor:
    """A delimiter rule's vocabulary mask, as a bool tensor as wide as the model's logits."""
    mask = torch.as_tensor(mask, dtype=torch.bool).flatten().cpu()
    if mask.numel() > width:
        raise ValueError(f"delimiter mask has {mask.numel()} entries but the model's vocabulary has {width}")
    if mask.numel() < width:  # the embedding matrix may be padded past the tokenizer's vocabulary
        mask = torch.cat([mask, mask.new_zeros(width - mask.numel())])
    return mask
