"""Delimiter rules `text` and `equation` on the real SmolLM2 byte-level BPE tokenizer."""

from __future__ import annotations

import time

import pytest
import torch

from treerpo_core.plugins import create_delimiter


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from treerpo_core.model_aliases import smollm2_dir

    return AutoTokenizer.from_pretrained(smollm2_dir())


def tid(tokenizer, text: str) -> int:
    (i,) = tokenizer.encode(text, add_special_tokens=False)
    return i


def split_points(rule, tokenizer, text: str) -> list[str]:
    """The text before each place the rule would split `text` (mask, then the context check)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    mask = rule.vocab_mask(tokenizer)
    out = []
    for k in range(len(ids) - 1):
        if mask[ids[k]] and rule.allows_split(ids[: k + 1], ids[k + 1]):
            out.append(tokenizer.decode(ids[: k + 1]))
    return out


def test_mask_shape_and_type(tokenizer):
    mask = create_delimiter("text").vocab_mask(tokenizer)
    assert mask.dtype == torch.bool and mask.shape == (len(tokenizer),)


def test_text_mask_marks_tokens_ending_in_delimiters(tokenizer):
    mask = create_delimiter("text").vocab_mask(tokenizer)
    for text in [".", "\n", "?", "!", ";", ":", ").", "\n\n"]:
        assert mask[tid(tokenizer, text)], text
    for text in [" the", "3", " =", ",", "\\", "Ġ"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert not mask[ids[-1]], text


def test_byte_level_newline_is_decoded_not_read_as_raw_symbol(tokenizer):
    # the vocabulary stores "\n" as "Ċ"; a rule reading raw vocabulary strings would miss every newline
    nl = tid(tokenizer, "\n")
    assert tokenizer.convert_ids_to_tokens(nl) == "Ċ"
    assert create_delimiter("text").vocab_mask(tokenizer)[nl]


def test_special_tokens_are_never_split_points(tokenizer):
    mask = create_delimiter("text", {"chars": ">"}).vocab_mask(tokenizer)
    assert mask[tid(tokenizer, ">")]
    assert not any(mask[i] for i in tokenizer.all_special_ids)  # "<|im_end|>" ends with ">"


def test_mask_is_computed_once_per_tokenizer(tokenizer):
    rule = create_delimiter("text")
    first = rule.vocab_mask(tokenizer)
    start = time.perf_counter()
    second = rule.vocab_mask(tokenizer)
    assert second is first
    assert time.perf_counter() - start < 0.01


def test_decimal_point_is_not_a_split_but_sentence_period_is(tokenizer):
    rule = create_delimiter("text")
    points = split_points(rule, tokenizer, "It costs 3.5 dollars. Then 2.\n")
    assert points == ["It costs 3.5 dollars.", "It costs 3.5 dollars. Then 2."]


def test_period_after_a_number_then_a_word_is_a_split(tokenizer):
    # "3." followed by " Then" ends a sentence; only a digit right after the period makes it a decimal
    assert split_points(create_delimiter("text"), tokenizer, "x = 3. Then y") == ["x = 3."]


def test_ratio_colon_is_not_a_split(tokenizer):
    assert split_points(create_delimiter("text"), tokenizer, "ratio 2:3 so: yes") == ["ratio 2:3 so:"]


def test_chars_option_changes_the_delimiters(tokenizer):
    rule = create_delimiter("text", {"chars": "\n"})
    assert split_points(rule, tokenizer, "a. b\nc") == ["a. b\n"]


def test_equation_rule_adds_equals(tokenizer):
    text_points = split_points(create_delimiter("text"), tokenizer, "21 + 4 = 25\nso")
    eq_points = split_points(create_delimiter("equation"), tokenizer, "21 + 4 = 25\nso")
    assert text_points == ["21 + 4 = 25\n"]
    assert eq_points == ["21 + 4 =", "21 + 4 = 25\n"]


def test_equation_rule_ignores_comparison_and_assignment_operators(tokenizer):
    rule = create_delimiter("equation")
    mask = rule.vocab_mask(tokenizer)
    for op in [" <=", " >=", " ==", " !=", " +="]:
        assert not mask[tid(tokenizer, op)], op
    assert mask[tid(tokenizer, " =")] and mask[tid(tokenizer, "=")]
    assert split_points(rule, tokenizer, "if x<=3 then") == []


def test_allows_split_needs_the_mask_first():
    with pytest.raises(RuntimeError, match="vocab_mask"):
        create_delimiter("text").allows_split([1, 2], 3)
