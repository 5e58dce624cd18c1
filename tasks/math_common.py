"""What the math tasks (gsm8k, numina-math, arithmetic) share: the prompt and the reference check at load time."""

from __future__ import annotations

import warnings
from typing import Iterable, Iterator

from treerpo_core.types import Example

# Qwen2.5-Math's chain-of-thought instruction, which the paper's models were trained with; the `boxed`
# verifier grades the last \boxed{} it asks for.
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def math_prompt(question: str) -> list[dict]:
    """Chat messages for a math question, laid out as Qwen2.5-Math's CoT prompt (instruction as system)."""
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": question.strip()}]


class SkippedRowsWarning(UserWarning):
    """Rows a task left out while loading (no usable reference); counted and named, never silent."""


def keep_checkable(examples: Iterable[tuple[int, Example]], where: str) -> Iterator[Example]:
    """Yield the examples whose reference the `boxed` verifier can grade; warn once, with the count and the
    first row indices of those skipped (a bad reference would otherwise reward every completion with 0)."""
    from treerpo_verifiers.boxed import check_references

    rows = list(examples)
    problems = check_references([ex.reference for _, ex in rows])
    skipped = [(i, p) for (i, _), p in zip(rows, problems) if p is not None]
    if skipped:
        warn_skipped(where, skipped, "whose reference cannot be graded")
    for (_, ex), problem in zip(rows, problems):
        if problem is None:
            yield ex


def warn_skipped(where: str, skipped: list[tuple[int, str]], why: str) -> None:
    shown = "; ".join(f"row {i}: {problem}" for i, problem in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    warnings.warn(f"{where}: skipped {len(skipped)} row(s) {why} ({shown}{more})", SkippedRowsWarning, stacklevel=3)
