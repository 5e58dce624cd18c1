"""Read a run directory (ARCHITECTURE.md "Run directory") into memory, tolerating a run still in progress.

A live run is appended to while we read it: the last line of `metrics.jsonl` or of a tree dump may be cut
mid-write, `summary.json` is absent until the end, and metric values can be NaN or missing (a step with no
leaves has no reward mean). None of that should stop a report; each skipped line is noted so the page can
say what it left out.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from treerpo_core.types import Tree

TREE_FILE = re.compile(r"^step-(\d+)\.jsonl$")


class ReportError(ValueError):
    """The directory cannot be reported on (missing, or holds nothing a run writes)."""


@dataclass
class RunData:
    run_dir: Path
    config_text: str | None  # config.yaml exactly as the run wrote it
    config: dict  # the same, parsed (empty when absent or unreadable)
    metrics: list[dict]  # one dict per step, sorted by step; non-finite values removed
    trees: dict[int, list[Tree]]  # dumped step -> trees, ascending steps
    summary: dict | None  # summary.json; None while the run is in progress
    notes: list[str] = field(default_factory=list)  # what was skipped, and why

    @property
    def in_progress(self) -> bool:
        return self.summary is None

    @property
    def mode(self) -> str:
        """`tree` or `flat` (GRPO), from the resolved config; `tree` when the config does not say."""
        return str((self.config.get("tree") or {}).get("mode") or "tree")

    def all_trees(self) -> list[Tree]:
        return [t for step in sorted(self.trees) for t in self.trees[step]]


def finite_number(value) -> float | None:
    """`value` as a float when it is a finite number, else None (NaN, inf, None, strings, bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_lines(path: Path, notes: list[str]):
    """Yield (line number, parsed object) for each readable line; note and skip the rest."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                # usually the last line of a file the run is still writing
                notes.append(f"{path.name} line {lineno}: skipped, not valid JSON ({exc.msg})")


def read_metrics(path: Path, notes: list[str]) -> list[dict]:
    """Metric rows keyed by step (the last row wins if a step repeats), keeping only finite numbers."""
    by_step: dict[int, dict] = {}
    for lineno, row in _json_lines(path, notes):
        if not isinstance(row, dict):
            notes.append(f"{path.name} line {lineno}: skipped, not a JSON object")
            continue
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            notes.append(f"{path.name} line {lineno}: skipped, no integer 'step'")
            continue
        clean = {k: v for k, v in ((k, finite_number(v)) for k, v in row.items()) if v is not None}
        clean["step"] = step
        by_step[step] = clean
    return [by_step[s] for s in sorted(by_step)]


def read_trees(trees_dir: Path, notes: list[str]) -> dict[int, list[Tree]]:
    """Every `step-<n>.jsonl` under `trees_dir`, parsed with the tree-dump contract (`Tree.from_dict`)."""
    out: dict[int, list[Tree]] = {}
    if not trees_dir.is_dir():
        return out
    files = sorted((int(m.group(1)), p) for p in trees_dir.iterdir() if (m := TREE_FILE.match(p.name)))
    for step, path in files:
        trees = []
        for lineno, row in _json_lines(path, notes):
            try:
                tree = Tree.from_dict(row)
            except (KeyError, TypeError, ValueError) as exc:
                notes.append(f"trees/{path.name} line {lineno}: skipped, not a tree dump ({exc!r})")
                continue
            if tree.step is None:  # dumps from `treerpo rollout` carry no step; the file name does
                tree.step = step
            trees.append(tree)
        if trees:
            out[step] = trees
    return out


def read_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {str(run_dir)!r} does not exist")
    notes: list[str] = []
    config_path, metrics_path = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    if not (config_path.is_file() or metrics_path.is_file() or (run_dir / "trees").is_dir()):
        raise ReportError(f"{str(run_dir)!r} is not a run directory: it has no config.yaml, metrics.jsonl or trees/ "
                          "(give the --output-dir of a `treerpo run`)")

    config_text, config = None, {}
    if config_path.is_file():
        config_text = config_path.read_text(encoding="utf-8", errors="replace")
        try:
            parsed = yaml.safe_load(config_text)
            config = parsed if isinstance(parsed, dict) else {}
        except yaml.YAMLError as exc:
            notes.append(f"config.yaml: not valid YAML ({exc}); shown as text only")

    summary = None
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8", errors="replace"))
        except json.JSONDecodeError as exc:
            notes.append(f"summary.json: skipped, not valid JSON ({exc.msg})")

    metrics = read_metrics(metrics_path, notes) if metrics_path.is_file() else []
    trees = read_trees(run_dir / "trees", notes)
    return RunData(run_dir=run_dir, config_text=config_text, config=config, metrics=metrics, trees=trees,
                   summary=summary, notes=notes)
