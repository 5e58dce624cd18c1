"""Delimiter rules `text` and `equation`: the tokens after which a TreeRPO node may end and branch.

The paper (Sec. 3.2) splits a node only "at a delimiter", so a segment ends at a natural reasoning
boundary rather than mid-word. Here a delimiter rule has two parts, both used by the rollout engine:

- `vocab_mask(tokenizer)`: a bool tensor over the vocabulary, True for tokens whose decoded text ends with a
  delimiter character. It is computed once per tokenizer (decoding 49k tokens takes ~0.4 s; the engine asks
  for the mask once and indexes it at every step).
- `allows_split(prefix_ids, next_id)`: the context check, asked once the token after the delimiter has been
  sampled. `prefix_ids` ends with the delimiter token. It vetoes splits that the mask alone cannot tell
  apart: the `.` of `3.5` (a period between digits is a decimal point, not the end of a step).

`text` splits after `. \\n ? ! ; :`; `equation` adds `=` so trees can branch where the model is unsure of
an intermediate result (`21 + 4 =` ...), the step that decides the reward in arithmetic.
"""

from __future__ import annotations

import weakref

import torch

from treerpo_core.plugins import hookimpl

TEXT_CHARS = ".\n?!;:"
# A delimiter between two digits is part of a number or a ratio (3.5, 2:3), not the end of a step.
DIGIT_JOINED = ".:"
# `=` right after one of these is an operator (<=, !=, +=, ==), not "the result is coming".
OPERATOR_CHARS = "=<>!+-*/%:|&^~"


class TextDelimiter:
    """Split after tokens ending in one of `chars` (trailing spaces and tabs ignored), except a character
    of `digit_joined` written between two digits."""

    def __init__(self, chars: str = TEXT_CHARS, digit_joined: str = DIGIT_JOINED):
        if not chars:
            raise ValueError("delimiter rule: `chars` must name at least one character")
        self.chars = chars
        self.digit_joined = digit_joined
        self._by_tokenizer: dict[int, tuple[object, torch.Tensor, list[str]]] = {}
        self._texts: list[str] = []  # token texts of the tokenizer last given to vocab_mask

    # -- per-token decision ----------------------------------------------------------------------
    def is_delimiter(self, text: str) -> bool:
        """Whether a token with this decoded text may end a segment."""
        text = text.rstrip(" \t")
        return bool(text) and text[-1] in self.chars

    # -- the protocol ----------------------------------------------------------------------------
    def vocab_mask(self, tokenizer) -> torch.Tensor:
        """BoolTensor[len(tokenizer)]: True where a split may follow the token. Cached per tokenizer."""
        key = id(tokenizer)
        if key not in self._by_tokenizer:
            texts = token_texts(tokenizer)
            mask = torch.tensor([self.is_delimiter(t) for t in texts], dtype=torch.bool)
            for i in getattr(tokenizer, "all_special_ids", []) or []:
                if 0 <= i < len(mask):
                    mask[i] = False  # <|im_end|> and friends end the text; they are never split points
            # keep the tokenizer referenced so its id() cannot be reused by another object
            self._by_tokenizer[key] = (tokenizer, mask, texts)
        _, mask, self._texts = self._by_tokenizer[key]
        return mask

    def allows_split(self, prefix_ids: list[int], next_id: int) -> bool:
        """Context veto, given the path so far (ending with the delimiter token) and the sampled next token.
        Uses the token texts of the tokenizer last passed to `vocab_mask`."""
        if not self._texts:
            raise RuntimeError("delimiter rule: call vocab_mask(tokenizer) before allows_split")
        if not prefix_ids:
            return True
        delim = self._text(prefix_ids[-1])
        before = (self._text(prefix_ids[-2]) if len(prefix_ids) > 1 else "") + delim
        after = self._text(next_id)
        return self._allows(before, after)

    def _allows(self, before: str, after: str) -> bool:
        """`before`: text up to and including the delimiter; `after`: the next token's text."""
        if len(before) >= 2 and before[-1] in self.digit_joined and before[-2].isdigit() and after[:1].isdigit():
            return False
        return True

    def _text(self, token_id: int) -> str:
        return self._texts[token_id] if 0 <= token_id < len(self._texts) else ""


class EquationDelimiter(TextDelimiter):
    """The `text` rule plus `=`: a node may end right before the model writes an intermediate result."""

    def __init__(self, chars: str = TEXT_CHARS + "=", digit_joined: str = DIGIT_JOINED):
        super().__init__(chars=chars, digit_joined=digit_joined)

    def is_delimiter(self, text: str) -> bool:
        stripped = text.rstrip(" \t")
        if stripped.endswith("=") and len(stripped) >= 2 and stripped[-2] in OPERATOR_CHARS:
            return False  # <=, ==, +=, := ... are operators, not "equals"
        return super().is_delimiter(text)

    def _allows(self, before: str, after: str) -> bool:
        if before.rstrip(" \t").endswith("="):
            # the operator may be split over two tokens: "<" "=" or "=" "="
            head = before.rstrip(" \t")[:-1]
            if (head and head[-1] in OPERATOR_CHARS) or after.startswith(("=", ">")):
                return False
        return super()._allows(before, after)


_texts_cache: "weakref.WeakKeyDictionary[object, list[str]]" = weakref.WeakKeyDictionary()


def token_texts(tokenizer) -> list[str]:
    """The decoded text of every token id, decoded one id at a time. Byte-level BPE tokens (SmolLM2, GPT-2,
    Qwen) store `Ġ`/`Ċ` for space/newline, so the raw vocabulary strings cannot be tested directly; a token
    holding part of a multi-byte character decodes to U+FFFD, which matches no delimiter. Shared by all
    rules (the `text` and `equation` rules of one run decode the vocabulary once)."""
    try:
        cached = _texts_cache.get(tokenizer)
    except TypeError:  # not weak-referenceable: decode without caching
        cached = None
    if cached is None or len(cached) != len(tokenizer):
        cached = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False)
        try:
            _texts_cache[tokenizer] = cached
        except TypeError:
            pass
    return cached


@hookimpl
def treerpo_register_delimiters(register):
    register("text", TextDelimiter)
    register("equation", EquationDelimiter)
