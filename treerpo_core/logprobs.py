"""The two per-token quantities both rollout and training need, defined once so they agree exactly.

- `token_logprobs`: log_softmax(logits / temperature) at the sampled token, with no top-k/top-p truncation
  and no repetition penalty. The rollout stores it; the loss recomputes it with the same function, so with
  unchanged weights the PPO ratio is exactly 1 (ARCHITECTURE.md, "Method defaults: log-probs").
- `topk_entropy`: the branching signal of paper section 3.2: entropy (nats) of the distribution over the
  top-k raw logits (temperature 1, before penalties and truncation), renormalised over those k.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits [..., V], token_ids [...] (long) -> log-probs [...] in float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits [..., V] -> entropy [...] of softmax over the k largest logits."""
    top = logits.float().topk(min(k, logits.shape[-1]), dim=-1).values
    logp = torch.log_softmax(top, dim=-1)
    return -(logp.exp() * logp).sum(-1)
