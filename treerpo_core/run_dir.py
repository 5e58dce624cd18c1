"""Files a run leaves behind (ARCHITECTURE.md, "Run directory"): `metrics.jsonl`, `trees/step-<n>.jsonl`,
`summary.json`. Only the main process writes; callers check `accelerator.is_main_process`.

`metrics.jsonl` is append-only during a run. On resume it is first cut back to the checkpoint's step, so
the steps a killed run logged after its last checkpoint (and will now redo) never appear twice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

from .types import Tree


class MetricsLog:
    """One JSON object per step. `resume_step`: drop existing lines whose step is beyond it (None: start a
    new file, discarding any old one)."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by kill -9
                    continue
                if row.get("step", math.inf) <= resume_step:
                    kept.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, default=_jsonable) + "\n")
            fh.flush()


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a `metrics.jsonl`; a last line cut short (a run killed mid-write) is left out, a broken
    line anywhere else is an error naming it."""
    p = Path(path)
    if not p.is_file():
        return []
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):
                break
            raise ValueError(f"{p}, line {i}: not a JSON object ({e})") from None
    return rows


def dump_trees(run_dir: str | Path, step: int, trees: Iterable[Tree]) -> Path:
    """`trees/step-<n>.jsonl`, one tree-dump object per line, each with `step` set."""
    out = Path(run_dir) / "trees" / f"step-{step}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for tree in trees:
        tree.step = step
        lines.append(tree.to_json())
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, out)
    return out


def write_json(path: str | Path, data: dict) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, p)
    return p


def _jsonable(obj):
    if hasattr(obj, "item"):  # 0-d tensors and numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def default_output_dir(prefix: str = "run") -> Path:
    """runs/<prefix>-<UTC time>, used when run.output_dir is not set."""
    import time

    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
