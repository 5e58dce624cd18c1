"""`treerpo report RUN_DIR`: training curves and an interactive tree viewer for a run directory.

    from treerpo_core.report import build_report
    index_html = build_report("runs/demo")      # writes runs/demo/report/{*.png, index.html}
"""

from __future__ import annotations

from pathlib import Path

from .page import prompt_decoder, render_page, viewer_data
from .plots import PANELS, Plot, draw_panels
from .rundir import ReportError, RunData, read_run

# The viewer embeds the trees of at most this many dumped steps (evenly spread, first and last kept) and
# this many prompts per step, so the page of a long run stays a few MB; the plots always use every dump.
MAX_TREE_STEPS = 20
MAX_TREES_PER_STEP = 8


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, max_tree_steps: int = MAX_TREE_STEPS,
                 max_trees_per_step: int = MAX_TREES_PER_STEP, decode_prompts: bool = True) -> Path:
    """Read `run_dir`, write the PNG panels and `index.html` into `out_dir` (default `run_dir/report`),
    and return the path of index.html. Safe on a run still being written."""
    if max_tree_steps < 1 or max_trees_per_step < 1:
        raise ReportError(f"max_tree_steps and max_trees_per_step must be >= 1, got {max_tree_steps}, {max_trees_per_step}")
    run = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    plots = draw_panels(run, out)
    decode = prompt_decoder(run) if decode_prompts and run.trees else None
    data = viewer_data(run, max_tree_steps, max_trees_per_step, decode)
    index = out / "index.html"
    index.write_text(render_page(run, plots, data), encoding="utf-8")
    return index


__all__ = ["build_report", "read_run", "RunData", "ReportError", "PANELS", "Plot", "draw_panels", "MAX_TREE_STEPS", "MAX_TREES_PER_STEP"]
