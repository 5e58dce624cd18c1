"""The training panels of the paper (reward, loss, tree size, error rate vs tree size, depth distribution,
leaf length by correctness and depth) plus clip ratio, entropy, splits and phase timings, as PNG files.

Each panel is a function `RunData -> Figure | None` (None: the run has no data for it yet, e.g. no tree
dump before step `run.dump_every`). The numbers a panel draws come from small pure functions above it, so
tests can check them with hand-computed values and then check that the figure drew exactly those.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Figure objects, not pyplot: no global figure state, and saving a PNG uses the Agg renderer whatever
# backend the caller's matplotlib is set to, so reports work on headless machines.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from treerpo_core.types import Tree, Verdict

from .rundir import RunData

FIGSIZE = (6.4, 3.9)
DPI = 110
PASS_COLOUR, WRONG_COLOUR = "#2e8b57", "#c0392b"


# -- numbers behind the panels (pure) ---------------------------------------------------------------

def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over the steps that logged a finite value for it."""
    pairs = [(m["step"], m[key]) for m in metrics if key in m]
    return [s for s, _ in pairs], [v for _, v in pairs]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start), so the curve starts at step one."""
    if window < 1:
        raise ValueError(f"moving-average window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def default_window(n: int) -> int:
    """About a tenth of the run, at most 50 steps: smooth enough to read a trend, short enough to follow it."""
    return max(1, min(50, n // 10))


@dataclass(frozen=True)
class Leaf:
    step: int
    prompt_id: str
    depth: int
    length: int  # tokens from the root to the end of this leaf: the whole completion
    passed: bool


def leaves_of(trees: list[Tree]) -> list[Leaf]:
    return [Leaf(step=t.step if t.step is not None else -1, prompt_id=t.prompt_id, depth=leaf.depth,
                 length=len(path), passed=leaf.verdict is Verdict.PASS)
            for t in trees for leaf, path in t.iter_paths()]


def error_rate_by_tree(trees: list[Tree]) -> list[tuple[int | None, int, float]]:
    """Per tree: (step, leaf count, fraction of leaves not passing). Trees with no leaves carry no rate."""
    out = []
    for t in trees:
        verdicts = [leaf.verdict for leaf in t.leaves()]
        if verdicts:
            out.append((t.step, len(verdicts), sum(v is not Verdict.PASS for v in verdicts) / len(verdicts)))
    return out


def depth_fractions(trees: list[Tree]) -> dict[int, float]:
    """Fraction of all leaves at each depth."""
    counts = Counter(leaf.depth for t in trees for leaf in t.leaves())
    total = sum(counts.values())
    return {d: counts[d] / total for d in sorted(counts)} if total else {}


def mean_length_by_depth(leaves: list[Leaf], passed: bool) -> dict[int, tuple[float, int]]:
    """depth -> (mean completion length in tokens, number of leaves), for passing or for non-passing leaves."""
    lengths = defaultdict(list)
    for leaf in leaves:
        if leaf.passed == passed:
            lengths[leaf.depth].append(leaf.length)
    return {d: (statistics.fmean(v), len(v)) for d, v in sorted(lengths.items())}


def spread_steps(steps: list[int], k: int) -> list[int]:
    """Up to k steps evenly spread over `steps` (sorted), always the first and the last."""
    if len(steps) <= k:
        return list(steps)
    if k == 1:
        return [steps[-1]]
    return sorted({steps[round(i * (len(steps) - 1) / (k - 1))] for i in range(k)})


# -- drawing ----------------------------------------------------------------------------------------

def _figure(title: str, xlabel: str, ylabel: str):
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _step_axis(ax, steps: list[int]) -> None:
    if len(steps) == 1:  # a single point would otherwise sit on an axis from -0.04 to 0.04
        ax.set_xlim(steps[0] - 1, steps[0] + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def metric_lines(keys: dict[str, str], title: str, ylabel: str, smooth: bool = False, from_zero: bool = False,
                 y_range: tuple[float, float] | None = None):
    """A panel of one line per metric key (key -> legend label); with `smooth`, a moving average on top;
    with `from_zero` (counts, times), the y axis starts at 0 so sizes read as proportions; `y_range` fixes
    the axis of a bounded quantity, so a flat 0 reward reads as 0 out of 1, not as a zoomed-in line."""

    def panel(run: RunData) -> Figure | None:
        drawn = [(label, *series(run.metrics, key)) for key, label in keys.items()]
        drawn = [(label, s, v) for label, s, v in drawn if s]
        if not drawn:
            return None
        fig, ax = _figure(title, "training step", ylabel)
        for label, steps, values in drawn:
            marker = "o" if len(steps) < 30 else None
            line, = ax.plot(steps, values, marker=marker, markersize=3, linewidth=1.2,
                            alpha=0.45 if smooth else 1.0, label=label)
            if smooth:
                w = default_window(len(values))
                ax.plot(steps, moving_average(values, w), color=line.get_color(), linewidth=2.2,
                        label=f"{label}, moving average over {w} step{'s' if w > 1 else ''}")
        _step_axis(ax, [s for _, steps, _ in drawn for s in steps])
        if from_zero:
            ax.set_ylim(bottom=0)
        if y_range is not None:
            ax.set_ylim(*y_range)
        if len(drawn) > 1 or smooth:
            ax.legend(fontsize="small")
        return fig

    return panel


def error_rate_panel(run: RunData) -> Figure | None:
    points = error_rate_by_tree(run.all_trees())
    if not points:
        return None
    fig, ax = _figure("(d) Error rate against tree size (one point per dumped prompt)",
                      "tree size (leaves per prompt)", "error rate (fraction of leaves not passing)")
    steps = [step if step is not None else 0 for step, _, _ in points]
    sc = ax.scatter([x for _, x, _ in points], [y for _, _, y in points], c=steps, cmap="viridis", s=22, alpha=0.8)
    if len(set(steps)) > 1:
        bar = fig.colorbar(sc, ax=ax, label="training step")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    by_size = defaultdict(list)
    for _, size, rate in points:
        by_size[size].append(rate)
    if len(by_size) > 1:  # the trend: mean error rate of the trees of each size
        sizes = sorted(by_size)
        ax.plot(sizes, [statistics.fmean(by_size[x]) for x in sizes], color="black", linewidth=1.2,
                label="mean over trees of that size")
        ax.legend(fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.05, 1.05)
    return fig


def depth_panel(run: RunData) -> Figure | None:
    shown = spread_steps(sorted(run.trees), 4)
    if not shown or not any(depth_fractions(run.trees[s]) for s in shown):
        return None
    fig, ax = _figure("(e) Leaf depth distribution", "leaf depth (segments from the root)", "fraction of leaves")
    width = 0.8 / len(shown)
    for i, step in enumerate(shown):
        fractions = depth_fractions(run.trees[step])
        ax.bar([d - 0.4 + width * (i + 0.5) for d in fractions], list(fractions.values()), width=width,
               label=f"step {step} ({len(run.trees[step])} prompt{'s' if len(run.trees[step]) > 1 else ''})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    return fig


def leaf_length_panel(run: RunData) -> Figure | None:
    leaves = leaves_of(run.all_trees())
    if not leaves:
        return None
    fig, ax = _figure("(f) Leaf length by correctness and depth", "leaf depth (segments from the root)",
                      "mean root-to-leaf length (tokens)")
    for offset, passed, colour, label in ((-0.2, True, PASS_COLOUR, "passing"), (0.2, False, WRONG_COLOUR, "not passing")):
        by_depth = mean_length_by_depth(leaves, passed)
        if not by_depth:
            continue
        bars = ax.bar([d + offset for d in by_depth], [m for m, _ in by_depth.values()], width=0.4,
                      color=colour, label=label)
        ax.bar_label(bars, labels=[f"n={n}" for _, n in by_depth.values()], fontsize="x-small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    return fig


@dataclass(frozen=True)
class Panel:
    name: str  # file stem of the PNG
    title: str
    draw: Callable[[RunData], Figure | None]


PANELS = [
    Panel("reward", "(a) Mean leaf reward",
          metric_lines({"reward_mean": "mean leaf reward"}, "(a) Mean leaf reward per step",
                       "reward (fraction of leaves passing)", smooth=True, y_range=(-0.02, 1.02))),
    Panel("loss", "(b) Loss", metric_lines({"loss": "loss"}, "(b) Policy loss (clipped surrogate)", "loss")),
    Panel("tree_size", "(c) Tree size",
          metric_lines({"tree/leaves": "leaves"}, "(c) Tree size per step", "leaves per prompt", from_zero=True)),
    Panel("error_rate", "(d) Error rate against tree size", error_rate_panel),
    Panel("depth", "(e) Depth distribution", depth_panel),
    Panel("leaf_length", "(f) Leaf length by correctness and depth", leaf_length_panel),
    Panel("clip_ratio", "Clip ratio",
          metric_lines({"clip_ratio": "clipped"}, "Clip ratio", "fraction of tokens clipped", from_zero=True)),
    Panel("entropy", "Entropy", metric_lines({"entropy": "entropy"}, "Policy entropy of sampled tokens", "entropy (nats)")),
    Panel("splits", "Splits",
          metric_lines({"splits/forced": "forced", "splits/entropy": "entropy", "splits/coverage": "coverage"},
                       "Splits per step, by kind", "splits", from_zero=True)),
    Panel("timings", "Phase timings",
          metric_lines({"time/rollout": "rollout", "time/verify": "verify", "time/train": "train"},
                       "Phase timings per step", "wall-clock time (s)", from_zero=True)),
]


@dataclass(frozen=True)
class Plot:
    name: str
    title: str
    path: Path | None  # None: nothing to draw yet
    figure: Figure | None


def draw_panels(run: RunData, out_dir: Path) -> list[Plot]:
    """Draw every panel into `out_dir/<name>.png`; panels without data are returned with no path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for panel in PANELS:
        fig = panel.draw(run)
        path = None
        if fig is not None:
            path = out_dir / f"{panel.name}.png"
            fig.savefig(path)
        plots.append(Plot(panel.name, panel.title, path, fig))
    return plots
