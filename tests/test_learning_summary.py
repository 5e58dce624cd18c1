"""`benchmarks/learning_summary.py`: the table over every learning.py run is computed from the runs' own curves."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("learning_summary", ROOT / "benchmarks" / "learning_summary.py")
learning_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning_summary)


def arm(curve: list[tuple[int, float]], n: int = 100) -> dict:
    return {"eval_n": n, "initial_eval_accuracy": curve[0][1], "final_eval_accuracy": curve[-1][1],
            "eval_curve": [{"tokens_unique": t, "accuracy": a, "n": n} for t, a in curve]}


def write_run(folder: Path, tree: list, grpo: list, *, sets=(), quick=False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"quick": quick, "settings": {"set": list(sets)}, "arms": {"treerpo": arm(tree), "grpo": arm(grpo)}}
    (folder / "learning.json").write_text(json.dumps(data))


@pytest.fixture
def results(tmp_path):
    write_run(tmp_path, [(0, 0.3), (10, 0.4), (20, 0.5)], [(0, 0.3), (10, 0.3), (20, 0.2)])
    write_run(tmp_path / "lower-lr", [(0, 0.3), (10, 0.2), (20, 0.3)], [(0, 0.3), (10, 0.5), (20, 0.4)],
              sets=["optim.lr=5e-6"])
    write_run(tmp_path / "smoke", [(0, 0.0), (5, 0.0)], [(0, 0.0), (5, 0.0)], quick=True)
    return tmp_path


def test_rows_hold_each_runs_end_points_difference_and_its_standard_error(results, capsys):
    out = learning_summary.main(["--results", str(results), "--plot", str(results / "runs.png")])
    rows = {r["run"]: r for r in out["rows"]}
    assert set(rows) == {"(top level)", "lower-lr"}, "a --quick smoke run is not a result"
    top = rows["(top level)"]
    assert top["diff"] == pytest.approx(0.3)
    assert top["z"] == pytest.approx(0.3 / math.sqrt(0.5 * 0.5 / 100 + 0.2 * 0.8 / 100))
    assert top["tree_mean"] == pytest.approx(0.45) and top["grpo_mean"] == pytest.approx(0.25)
    assert rows["lower-lr"]["changes"] == "optim.lr=5e-6" and top["changes"] == "demo recipe as is"
    assert out["mean_final_diff"] == pytest.approx((0.3 - 0.1) / 2)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "runs=2 treerpo_ahead_at_end=1 grpo_ahead_at_end=1 mean_final_diff_points=+10.0"
    assert (results / "runs.png").stat().st_size > 10_000


def test_a_folder_without_runs_is_an_error_naming_it(tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path)):
        learning_summary.main(["--results", str(tmp_path)])
