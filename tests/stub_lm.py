"""A scripted causal LM for testing branching rules exactly: the logits depend only on how many tokens have
been generated on the row's path (recovered from the position ids), so a test chooses where the delimiter
comes, where the entropy is high and where the path ends."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

VOCAB = 40
EOS = 0
DELIM = 5
FILLER = 7
SPREAD = list(range(10, 30))  # high-entropy positions spread evenly over these 20 tokens
PROMPT = [1, 2, 3]
HIGH_ENTROPY = math.log(len(SPREAD))  # entropy of the top-20, renormalised, at a high-entropy position


class StubCache:
    """Only tracks the batch size, so a forward with the wrong number of rows fails loudly."""

    def __init__(self, batch: int):
        self.batch = batch

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        assert int(indices.max()) < self.batch, "selected a row the cache does not have"
        self.batch = len(indices)


class StubLM(torch.nn.Module):
    """`high_at`: generated-token indices (0 = first token) drawn from 20 equally likely tokens;
    `delim_at`: indices where the delimiter is (almost surely) sampled; from `eos_at` on, EOS.
    Anywhere else the filler token is (almost surely) sampled."""

    def __init__(self, *, high_at=(0,), delim_at=(), eos_at=12):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the engine a device
        self.high_at, self.delim_at, self.eos_at = set(high_at), set(delim_at), eos_at
        self.generation_config = SimpleNamespace(eos_token_id=EOS)
        self.forwards = 0

    def logits_for(self, j: int) -> torch.Tensor:
        row = torch.zeros(VOCAB)
        if j >= self.eos_at:
            row[EOS] = 30.0
        elif j in self.high_at:
            row[SPREAD] = 5.0
        elif j in self.delim_at:
            row[DELIM] = 30.0
        else:
            row[FILLER] = 30.0
        return row

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        batch = input_ids.shape[0]
        if cache is None:
            cache = StubCache(batch)
        assert cache.batch == batch, f"cache has {cache.batch} rows, input {batch}"
        self.forwards += 1
        generated = position_ids[:, -1] + 1 - len(PROMPT)  # index of the token these logits predict
        logits = torch.stack([self.logits_for(int(j)) for j in generated])[:, None, :]
        return SimpleNamespace(logits=logits, cache=cache)


class StubTokenizer:
    eos_token_id = EOS
    pad_token_id = EOS
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(PROMPT)}

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i == EOS))

    def __len__(self):
        return VOCAB


class StubDelimiter:
    """Splits may follow DELIM; `allows_split` records what it was asked and answers `allow`."""

    def __init__(self, allow: bool = True, with_allows: bool = False):
        self.allow = allow
        self.asked: list[tuple[list[int], int]] = []
        if with_allows:
            self.allows_split = self._allows_split

    def vocab_mask(self, tokenizer):
        mask = torch.zeros(len(tokenizer), dtype=torch.bool)
        mask[DELIM] = True
        return mask

    def _allows_split(self, prefix_ids, next_id):
        self.asked.append((list(prefix_ids), next_id))
        return self.allow
