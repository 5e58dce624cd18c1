"""Task `gsm8k`: grade-school word problems (openai/gsm8k, config `main`), the paper's evaluation set.

Rows are `{"question", "answer"}`; the answer is a worked solution with calculator notes `<<48/2=24>>` and a
final line `#### 72`. The reference is the text after `####` with thousands commas removed; the SFT target is
the solution without the calculator notes and with the final line rewritten as `\\boxed{72}`, so SFT teaches
the format the `boxed` verifier grades.
"""

from __future__ import annotations

import re
from typing import Iterator

from treerpo_core.data import DataError, load_rows, require_fields
from treerpo_core.plugins import hookimpl
from treerpo_core.types import Example

from .math_common import keep_checkable, math_prompt

HUB_ID = "openai/gsm8k"
SPLITS = ("train", "test")
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")


def split_answer(answer: str, where: str) -> tuple[str, str]:
    """(worked steps, final answer) of a GSM8K `answer` field."""
    if "####" not in answer:
        raise DataError(f"{where}: answer has no '####' final line")
    steps, final = answer.rsplit("####", 1)
    final = final.strip().replace(",", "")
    if not final:
        raise DataError(f"{where}: nothing after '####'")
    return steps, final


def sft_target(steps: str, final: str) -> str:
    lines = [line.rstrip() for line in _CALCULATOR_NOTE.sub("", steps).strip().splitlines() if line.strip()]
    return "\n".join(lines + [f"\\boxed{{{final}}}"])


class GSM8KTask:
    default_verifier = "boxed"
    default_delimiter = "text"
    tree_defaults: dict = {}  # the paper's settings (the config defaults) were chosen on GSM8K-length solutions

    def __init__(self, data_file: str | None = None):
        """`data_file`: local JSONL/parquet in the hub layout; a `{split}` in the path is replaced by the split."""
        self.data_file = data_file

    def examples(self, split: str) -> Iterator[Example]:
        if split not in SPLITS:
            raise DataError(f"gsm8k has splits {', '.join(SPLITS)}, not {split!r}")
        path = self.data_file.format(split=split) if self.data_file else None
        rows = load_rows(HUB_ID, split, data_file=path, config_name="main")
        yield from keep_checkable(self._examples(rows, split, path or HUB_ID), f"gsm8k {split}")

    @staticmethod
    def _examples(rows: list[dict], split: str, source: str) -> Iterator[tuple[int, Example]]:
        for i, row in enumerate(rows):
            where = f"gsm8k {split} ({source}) row {i}"
            require_fields(row, ("question", "answer"), where)
            steps, final = split_answer(row["answer"], where)
            yield i, Example(id=f"gsm8k-{split}-{i}", prompt=math_prompt(row["question"]), reference=final,
                             metadata={"row": i}, target=sft_target(steps, final))


@hookimpl
def treerpo_register_tasks(register):
    register("gsm8k", GSM8KTask)
