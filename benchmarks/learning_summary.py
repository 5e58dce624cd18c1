"""Summarise every `benchmarks/learning.py` run under a results folder: one table, one figure.

    python benchmarks/learning_summary.py [--results benchmarks/results] [--plot benchmarks/results/learning-runs.png]

Each run (a `learning.json` written by learning.py) becomes a row: what it changed from the demo recipe, both
arms' greedy accuracy at the start and at the budget, and the mean accuracy over the evaluations after the
start (less sensitive to where the last evaluation happens to fall on a wobbling curve). The standard error of
a difference treats the two arms' 128-problem evaluations as independent; they share the problems, so it is
on the cautious side. The figure puts every run's two curves side by side, so no single run stands in for the
rest. The last line is the figure to quote: the mean over runs of TreeRPO's final accuracy minus GRPO's.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("treerpo", "grpo")


def load_runs(results: Path) -> list[tuple[str, dict]]:
    """(run folder relative to `results`, learning.json) for every full (non --quick) run with both arms."""
    runs = []
    for path in sorted(results.rglob("learning.json")):
        data = json.loads(path.read_text())
        if data.get("quick") or not all(arm in data.get("arms", {}) for arm in ARMS):
            continue
        folder = path.parent.relative_to(results)
        runs.append((str(folder) if folder.parts else "(top level)", data))
    return runs


def label(data: dict) -> str:
    settings = data.get("settings", {})
    changes = list(settings.get("set") or [])
    return ", ".join(changes) if changes else "demo recipe as is"


def after_start_mean(arm: dict) -> float:
    points = [p["accuracy"] for p in arm["eval_curve"] if p["tokens_unique"] > 0]
    return sum(points) / len(points)


def difference_se(p: float, q: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n + q * (1 - q) / n)


def summarise(runs: list[tuple[str, dict]]) -> tuple[list[dict], str]:
    rows, lines = [], []
    head = (f"{'run':<34} {'start':>6} {'tree end':>8} {'grpo end':>8} {'diff':>6} {'diff/SE':>7} "
            f"{'tree mean':>9} {'grpo mean':>9}  changes")
    lines.append(head)
    for name, data in runs:
        tree, grpo = data["arms"]["treerpo"], data["arms"]["grpo"]
        n = tree["eval_n"]
        row = {
            "run": name, "changes": label(data), "n": n,
            "start": tree["initial_eval_accuracy"],
            "tree_end": tree["final_eval_accuracy"], "grpo_end": grpo["final_eval_accuracy"],
            "tree_mean": after_start_mean(tree), "grpo_mean": after_start_mean(grpo),
        }
        row["diff"] = row["tree_end"] - row["grpo_end"]
        row["z"] = row["diff"] / difference_se(row["tree_end"], row["grpo_end"], n)
        rows.append(row)
        lines.append(f"{name:<34} {100 * row['start']:>5.1f}% {100 * row['tree_end']:>7.1f}% "
                     f"{100 * row['grpo_end']:>7.1f}% {100 * row['diff']:>+6.1f} {row['z']:>+7.1f} "
                     f"{100 * row['tree_mean']:>8.1f}% {100 * row['grpo_mean']:>8.1f}%  {row['changes']}")
    return rows, "\n".join(lines)


def plot(runs: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), sharey=True, squeeze=False)
    for ax, (name, data) in zip(axes.flat, runs):
        for arm in ARMS:
            curve = data["arms"][arm]["eval_curve"]
            ax.plot([p["tokens_unique"] / 1000 for p in curve], [100 * p["accuracy"] for p in curve],
                    marker="o", markersize=3, label=arm)
        ax.set_title(f"{name}\n{label(data)}", fontsize=7)
        ax.grid(alpha=0.3)
        ax.set_xlabel("unique generated tokens (thousands)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("greedy accuracy (%)", fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("arithmetic, smollm2-135m: TreeRPO vs GRPO at a matched token budget, every run", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="folder searched for learning.json")
    ap.add_argument("--plot", default=None, help="figure path (default: RESULTS/learning-runs.png)")
    args = ap.parse_args(argv)
    results = Path(args.results)
    runs = load_runs(results)
    if not runs:
        raise SystemExit(f"no full learning.py runs (learning.json with both arms) under {results}")
    rows, text = summarise(runs)
    print(text)
    plot(runs, Path(args.plot) if args.plot else results / "learning-runs.png")
    mean_diff = sum(r["diff"] for r in rows) / len(rows)
    wins = sum(r["diff"] > 0 for r in rows)
    losses = sum(r["diff"] < 0 for r in rows)
    print(f"runs={len(rows)} treerpo_ahead_at_end={wins} grpo_ahead_at_end={losses} "
          f"mean_final_diff_points={100 * mean_diff:+.1f}")
    return {"rows": rows, "mean_final_diff": mean_diff}


if __name__ == "__main__":
    main()
