"""Token sampling as the config says (ARCHITECTURE.md "Method defaults: sampling"), batched over rows.

Order follows transformers' `generate` (repetition penalty, then temperature, top-k, top-p), so the tree
engine and the plain `generate` baseline of `benchmarks/rollout.py` sample from the same distribution.
All randomness comes from one `torch.Generator`, so a seed fixes the tree.

Speed: after top-k only k tokens can be drawn, so everything past the penalty works on [B, k] candidates,
never on the whole vocabulary (a multinomial or sort over 49k tokens per row costs more than a small
model's forward on a CPU). The repetition penalty gathers and scatters at the row's history, as
transformers does, instead of masking the vocabulary.

These functions only choose tokens. The log-prob stored for a token is always
`logprobs.token_logprobs(raw_logits, ...)` (no penalty, no truncation), whatever distribution chose it.
"""

from __future__ import annotations

import torch

from ..config import SamplingConfig


def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [B, V], history [B, L] (token ids on each row's sequence; repeats are harmless) -> a penalised
    copy [B, V]. As CTRL / transformers: a seen token's logit is divided by `penalty` when positive,
    multiplied when negative."""
    out = logits.clone()
    if penalty != 1.0 and history.shape[-1]:
        seen = out.gather(-1, history)
        out.scatter_(-1, history, torch.where(seen > 0, seen / penalty, seen * penalty))
    return out


def candidates(logits: torch.Tensor, history: torch.Tensor, cfg: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits [B, V] -> (probs [B, k], token ids [B, k]): the tokens that can be drawn and their
    probabilities after penalty, temperature, top-k and top-p (the nucleus is the smallest set of the
    top-k whose probability reaches `top_p`; tokens outside it get probability 0)."""
    x = apply_repetition_penalty(logits.float(), history, cfg.repetition_penalty)
    k = cfg.top_k if 0 < cfg.top_k < x.shape[-1] else x.shape[-1]
    values, ids = x.topk(k, dim=-1)  # [B, k], descending
    values = values / cfg.temperature
    if cfg.top_p < 1.0:
        p = values.softmax(-1)
        drop = (p.cumsum(-1) - p) >= cfg.top_p  # the tokens ranked above already reach top_p
        drop[..., 0] = False
        values = values.masked_fill(drop, float("-inf"))
    return values.softmax(-1), ids


def draw(probs: torch.Tensor, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row from candidates (probs [B, k], ids [B, k]) -> token ids [B]."""
    pick = torch.multinomial(probs, 1, generator=generator)
    return ids.gather(-1, pick).squeeze(-1)


def draw_excluding(probs: torch.Tensor, ids: torch.Tensor, taken: torch.Tensor, generator: torch.Generator,
                   fallback_logits: torch.Tensor) -> torch.Tensor:
    """One token per row from candidates renormalised without `taken` [B]. Rows where nothing else has
    probability (a peaked distribution after truncation) draw from softmax(`fallback_logits` [B, V]) without
    `taken` instead, so the result always differs from `taken`."""
    p = probs.masked_fill(ids == taken.unsqueeze(-1), 0.0)
    empty = p.sum(-1) <= 0
    p[empty] = 1.0  # placeholder so multinomial accepts the row; replaced below
    out = draw(p, ids, generator)
    if empty.any():
        alt = fallback_logits[empty].float().softmax(-1)
        alt.scatter_(-1, taken[empty].unsqueeze(-1), 0.0)
        out[empty] = torch.multinomial(alt, 1, generator=generator).squeeze(-1)
    return out


def topk_alternative(logits: torch.Tensor, taken: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The second child's first token of a regular split (paper section 3.2): drawn from the top-`k` raw
    logits (temperature 1, the distribution whose entropy triggered the split) without the token the path
    sampled, renormalised. logits [B, V], taken [B] -> [B]."""
    values, ids = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
    return draw_excluding(values.softmax(-1), ids, taken, generator, fallback_logits=logits)
