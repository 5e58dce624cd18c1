"""Token sampling as the config says (ARCHITECTURE.md "Method defaults: sampling"), batched over rows.

Order follows transformers' `generate` (repetition penalty, then temperature, top-k, top-p), so the tree
engine and the plain `generate` baseline of `benchmarks/rollout.py` sample from the same distribution.
All randomness comes from one `torch.Generator`, so a seed fixes the tree.

These functions only choose tokens. The log-prob stored for a token is always
`logprobs.token_logprobs(raw_logits, ...)` (no penalty, no truncation), whatever distribution chose it.
"""

from __future__ import annotations

import torch

from ..config import SamplingConfig


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [B, V], seen [B, V] bool (tokens already on the row's sequence) -> penalised logits [B, V].
    As CTRL / transformers: a seen token's logit is divided by `penalty` when positive, multiplied when negative."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def truncate(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits [B, V] -> logits with everything outside top-k and the top-p nucleus set to -inf.
    The nucleus keeps the smallest set of tokens whose probability reaches `top_p` (at least one token).
    top-p is computed inside the top-k (what transformers gets after masking), so only k values are sorted."""
    k = top_k if 0 < top_k < logits.shape[-1] else logits.shape[-1]
    values, index = logits.topk(k, dim=-1)  # [B, k], descending
    if top_p < 1.0:
        p = values.softmax(-1)
        drop = (p.cumsum(-1) - p) >= top_p  # the tokens ranked above already reach top_p
        drop[..., 0] = False
        values = values.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, index, values)


def sampling_probs(logits: torch.Tensor, seen: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Raw logits [B, V] -> the probabilities tokens are drawn from [B, V] (penalty, temperature, top-k, top-p)."""
    x = apply_repetition_penalty(logits.float(), seen, cfg.repetition_penalty)
    x = truncate(x / cfg.temperature, cfg.top_k, cfg.top_p)
    return x.softmax(-1)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """probs [B, V] -> token ids [B]."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def draw_excluding(probs: torch.Tensor, taken: torch.Tensor, generator: torch.Generator,
                   fallback: torch.Tensor | None = None) -> torch.Tensor:
    """A token per row from `probs` [B, V] renormalised without `taken` [B]. Where nothing else has
    probability (a peaked distribution after truncation), draw from `fallback` [B, V] instead (also
    without `taken`), so the result always differs from `taken`."""
    p = probs.scatter(-1, taken.unsqueeze(-1), 0.0)
    empty = p.sum(-1) <= 0
    if empty.any():
        if fallback is None:
            raise ValueError("no token left to draw after excluding the taken one")
        alt = fallback.scatter(-1, taken.unsqueeze(-1), 0.0)
        p = torch.where(empty.unsqueeze(-1), alt, p)
    return torch.multinomial(p, 1, generator=generator).squeeze(-1)


def topk_alternative(logits: torch.Tensor, taken: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The second child's first token of a regular split (paper section 3.2): drawn from the top-`k` raw
    logits (temperature 1, the distribution whose entropy triggered the split) without the token the path
    sampled, renormalised. logits [B, V], taken [B] -> [B]."""
    top = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
    probs = torch.zeros_like(logits, dtype=torch.float32).scatter(-1, top.indices, top.values.softmax(-1))
    return draw_excluding(probs, taken, generator, fallback=logits.float().softmax(-1))
