"""Task `numina-math`: competition and textbook problems with worked solutions (AI-MO/NuminaMath-CoT), the
paper's SFT and RL training data (two disjoint 5k subsets: `task.offset` / `task.limit`).

Rows are `{"source", "problem", "solution", "messages"}`. The reference is the last `\\boxed{}` of the
solution; rows without one (proofs, for instance) cannot be graded and are skipped and counted, as are rows
whose boxed answer math-verify cannot parse. The SFT target is the solution itself.
"""

from __future__ import annotations

from typing import Iterator

from treerpo_core.data import DataError, load_rows, require_fields
from treerpo_core.plugins import hookimpl
from treerpo_core.types import Example
from treerpo_verifiers.boxed import find_last_box

from .math_common import keep_checkable, math_prompt, warn_skipped

HUB_ID = "AI-MO/NuminaMath-CoT"
SPLITS = ("train", "test")


class NuminaMathTask:
    default_verifier = "boxed"
    default_delimiter = "text"
    tree_defaults: dict = {}  # the paper's settings (the config defaults) come from this recipe

    def __init__(self, data_file: str | None = None, source: str | list[str] | None = None):
        """`source`: keep only rows of this source (or these sources), e.g. "gsm8k" or ["olympiads", "amc_aime"].
        `data_file`: local JSONL/parquet in the hub layout; a `{split}` in the path is replaced by the split."""
        self.data_file = data_file
        if isinstance(source, str):
            source = [source]
        if source is not None and (not source or not all(isinstance(s, str) and s for s in source)):
            raise DataError(f"numina-math option `source` must be a source name or a list of them, got {source!r}")
        self.sources = set(source) if source is not None else None

    def examples(self, split: str) -> Iterator[Example]:
        if split not in SPLITS:
            raise DataError(f"numina-math has splits {', '.join(SPLITS)}, not {split!r}")
        path = self.data_file.format(split=split) if self.data_file else None
        rows = load_rows(HUB_ID, split, data_file=path)
        yield from keep_checkable(self._examples(rows, split, path or HUB_ID), f"numina-math {split}")

    def _examples(self, rows: list[dict], split: str, where_from: str) -> Iterator[tuple[int, Example]]:
        unboxed: list[tuple[int, str]] = []
        kept = 0
        for i, row in enumerate(rows):
            require_fields(row, ("source", "problem", "solution"), f"numina-math {split} ({where_from}) row {i}")
            if self.sources is not None and row["source"] not in self.sources:
                continue
            answer, note = find_last_box(row["solution"])
            if answer is None or not answer.strip():
                unboxed.append((i, note or "empty \\boxed{}"))
                continue
            kept += 1
            yield i, Example(id=f"numina-{split}-{i}", prompt=math_prompt(row["problem"]), reference=answer.strip(),
                             metadata={"row": i, "source": row["source"]}, target=row["solution"].strip())
        if unboxed:
            warn_skipped(f"numina-math {split}", unboxed, "without a boxed answer in the solution")
        if self.sources is not None and not kept and not unboxed:
            found = sorted({str(r.get("source")) for r in rows})[:20]
            raise DataError(f"numina-math {split}: no rows with source in {sorted(self.sources)}; sources present: {found}")


@hookimpl
def treerpo_register_tasks(register):
    register("numina-math", NuminaMathTask)
