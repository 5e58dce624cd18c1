"""Dataset plumbing shared by tasks: rows from the hub or a local file, field checks, disjoint subsets.

Rows are plain dicts in the hub dataset's own layout; tasks turn them into `Example`s.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable, Iterator

from .types import Example


class DataError(ValueError):
    """A dataset problem that names the file (or hub dataset) and row at fault."""


def read_data_file(path: str | Path) -> list[dict]:
    """Rows of a local JSONL (`.jsonl`, `.json` lines, optionally `.gz`) or parquet file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist")
    suffixes = "".join(p.suffixes[-2:]).lower()
    if suffixes.endswith(".parquet"):
        import datasets

        return list(datasets.Dataset.from_parquet(str(p)))
    opener = open
    if suffixes.endswith(".gz"):
        import gzip

        opener = gzip.open
    rows = []
    with opener(p, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}, line {lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{p}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def load_rows(hub_id: str, split: str, *, data_file: str | None = None, config_name: str | None = None) -> list[dict]:
    """Rows from `data_file` when given (offline), else from the Hugging Face hub with `datasets`."""
    if data_file:
        return read_data_file(data_file)
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, config_name, split=split)
    except Exception as exc:  # network, missing split, auth: say how to run offline
        raise DataError(
            f"could not load {hub_id}{'/' + config_name if config_name else ''} split {split!r} from the hub "
            f"({type(exc).__name__}: {exc}); pass --data-file PATH (JSONL or parquet in the dataset's layout) to run offline"
        ) from exc
    return list(ds)


def require_fields(row: Any, fields: Iterable[str], where: str) -> None:
    """`where` names the row, e.g. "gsm8k train.jsonl row 17"."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)} (has: {', '.join(sorted(row))})")


def select(examples: Iterable[Example], *, offset: int = 0, limit: int | None = None,
           shuffle_seed: int | None = 0) -> list[Example]:
    """A seeded shuffle, then `[offset : offset + limit]`: two calls with adjacent offsets give disjoint
    subsets (the paper trains SFT and RL on non-overlapping 5k subsets). `shuffle_seed=None` keeps order."""
    items = list(examples)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(items)
    end = None if limit is None else offset + limit
    return items[offset:end]


def task_examples(task: Any, split: str, *, offset: int = 0, limit: int | None = None,
                  shuffle_seed: int | None = 0) -> list[Example]:
    return select(task.examples(split), offset=offset, limit=limit, shuffle_seed=shuffle_seed)


def iter_cycle(examples: list[Example], start: int = 0) -> Iterator[tuple[int, Example]]:
    """Endless (position, example) stream for training; `start` resumes the data position."""
    if not examples:
        raise DataError("no examples to train on (check task.split, task.offset and task.limit)")
    i = start
    while True:
        yield i, examples[i % len(examples)]
        i += 1
