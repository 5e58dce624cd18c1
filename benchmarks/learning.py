"""Does TreeRPO learn, and does it beat flat GRPO for the same generation cost? (issue 9)

    python benchmarks/learning.py [--quick] [--out-dir benchmarks/results] [--work-dir runs/learning]
                                  [--budget TOKENS] [--eval-n N] [--evals K] [--model smollm2-135m]
                                  [--set KEY=VALUE ...] [--sft-dir DIR] [--arms treerpo,grpo]

What it does, on the `arithmetic` task with the embedded demo's settings (recipes/demo.yaml):
1. one SFT warm-up on the demo's 160 worked solutions; both arms start from this same checkpoint;
2. the greedy accuracy of that checkpoint on the first `--eval-n` problems of the task's fixed `test` split;
3. two RL runs through the real `Trainer`, TreeRPO (`tree.mode=tree`) and flat GRPO (`tree.mode=flat`,
   `tree.n_flat` samples per prompt), with the same prompts in the same order (same task seed and offset),
   the same optimizer and learning rate, each stopped at the first step whose cumulative **unique generated
   tokens** reach `--budget` (what generation pays for; the root-to-leaf path sum is reported beside it);
4. greedy accuracy on the same test problems each time an arm's cumulative unique tokens cross one of
   `--evals` evenly spaced marks, and at the end.

Writes `<out-dir>/learning.json` (per arm `treerpo`, `grpo`: initial/final accuracy, the eval curve against
tokens, mean leaf reward per step, tokens generated, wall seconds) and `<out-dir>/learning.png` (accuracy
against unique tokens, both arms), and prints the result table last.

`--set KEY=VALUE` (repeatable) changes a config key for both arms, as `treerpo run --set` does: the tree
keys (`tree.h_th`, `tree.max_leaves`, ...) only act on the TreeRPO arm and `tree.n_flat` only on GRPO, while
`optim.lr` or `train.prompts_per_step` change both, so the arms keep one optimizer. `--sft-dir` reuses the
warm-up of an earlier run (its `<work-dir>/sft-run/sft` directory) instead of training a new one, and `--arms`
runs a subset; both are for tuning, and the JSON records them.

`--quick` is the CI smoke test: the 3M-parameter `tiny-random` model, a few SFT examples, a budget of a few
steps, eight test problems; it checks the plumbing (budget stop, periodic eval, outputs), not learning.

The full mode is sized for about an hour for both arms together on 2 otherwise idle CPU cores. Accuracy
differences on `--eval-n` problems smaller than ~2 standard errors (sqrt(p(1-p)/n), ~6 points at n=128 and
p=0.5) are noise; the JSON carries n so readers can judge.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

from treerpo_cli.run_cmd import demo_recipe
from treerpo_core.accel import create_task
from treerpo_core.config import Config
from treerpo_core.data import select
from treerpo_core.evaluate import greedy_accuracy
from treerpo_core.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"treerpo": "tree", "grpo": "flat"}

# settings the two arms share on top of recipes/demo.yaml; `run.eval_limit=0` because this script evaluates
# (more problems, at token marks) instead of the trainer's own start/final check
SHARED = ("run.eval_limit=0", "run.save_every=0", "run.dump_every=0", "run.keep_last=1", "run.max_steps=100000")
QUICK = ("model.name=tiny-random", "task.options.train_size=256", "sft.num_examples=8", "sft.batch_size=4",
         "sampling.max_new_tokens=24", "eval.max_new_tokens=16", "train.prompts_per_step=2", "tree.n_flat=4",
         "tree.max_leaves=4", "optim.lr=1e-3",
         # pinned so the smoke test's token arithmetic (two tree steps to the budget) does not move with the
         # demo recipe's tree thresholds; the full mode keeps the demo's
         "tree.h_th=1.0", "tree.l_min=8", "tree.s_min=64")
# Full-mode size, measured on 2 idle cores (benchmarks/results/learning*/learning.json): SFT 2.5-4 min, the
# TreeRPO arm ~22 min (85-89 steps), the GRPO arm ~11 min (46 steps), 36-38 min in all, each arm including
# its six greedy evaluations of 128 problems.
FULL_BUDGET, QUICK_BUDGET = 40_000, 150


class BudgetTrainer(Trainer):
    """A `Trainer` that stops at a unique-token budget and evaluates greedily at token marks.

    The trainer's loop checks `cfg.run.max_steps` before every step and saves its final checkpoint when
    `step == cfg.run.max_steps`; `step_metrics` runs once per step with that step's trees. Lowering
    `max_steps` to the current step from there ends the run after this step exactly as a step cap would,
    so the trainer itself needs no budget option. `held_out_accuracy` (called with the live policy and
    verifier pool before the first step and after the last) is where this class gets hold of the model to
    evaluate mid-run."""

    def __init__(self, cfg, *, budget: int, eval_examples, marks: list[int], initial: dict | None,
                 max_new_tokens: int, batch_size: int):
        super().__init__(cfg, progress=False)
        self.budget, self.eval_examples, self.initial = budget, eval_examples, initial
        self.eval_kwargs = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
        self.marks = sorted(marks)
        self.tokens_unique = self.tokens_path_sum = 0
        self.curve: list[dict] = []
        self.rewards: list[float | None] = []
        self.step_tokens: list[int] = []  # unique tokens generated in each step
        self.step_leaves: list[float] = []  # mean leaves (graded samples) per prompt in each step
        self.eval_seconds = 0.0
        self.step_now = 0
        self.live = None  # (policy, tokenizer, pool) once the run has started

    def evaluate_now(self) -> dict:
        policy, tokenizer, pool = self.live
        t0 = time.monotonic()
        r = greedy_accuracy(policy, tokenizer, self.eval_examples, pool, **self.eval_kwargs)
        self.eval_seconds += time.monotonic() - t0
        self.curve.append({"step": self.step_now, "tokens_unique": self.tokens_unique,
                           "tokens_path_sum": self.tokens_path_sum, "accuracy": r["accuracy"], "n": r["n"]})
        print(f"  [{self.cfg.tree.mode}] step {self.step_now}: {self.tokens_unique} unique tokens, "
              f"greedy accuracy {r['accuracy']:.3f} on {r['n']}", file=sys.stderr, flush=True)
        return self.curve[-1]

    def held_out_accuracy(self, model, tokenizer, held_out, pool, name):
        self.live = (model, tokenizer, pool)
        if self.curve and self.curve[-1]["step"] == self.step_now:  # already evaluated at this step
            return self.curve[-1]
        if self.step_now == 0 and self.initial is not None:  # the same SFT checkpoint as the other arm
            self.curve.append({**self.initial, "step": 0, "tokens_unique": 0, "tokens_path_sum": 0})
            return self.curve[-1]
        return self.evaluate_now()

    def step_metrics(self, step, trees, *args, **kwargs):
        row = super().step_metrics(step, trees, *args, **kwargs)
        self.step_now = step
        self.step_tokens.append(sum(t.unique_tokens for t in trees))
        self.tokens_unique += self.step_tokens[-1]
        self.tokens_path_sum += sum(t.path_token_sum for t in trees)
        self.step_leaves.append(round(sum(len(t.leaves()) for t in trees) / max(1, len(trees)), 2))
        self.rewards.append(row["reward_mean"])
        crossed = False
        while self.marks and self.tokens_unique >= self.marks[0]:
            self.marks.pop(0)
            crossed = True
        if self.tokens_unique >= self.budget:
            self.cfg.run.max_steps = step  # see the class docstring; the final evaluation follows this step
        elif crossed:
            self.evaluate_now()
        print(f"  [{self.cfg.tree.mode}] step {step}: {self.step_tokens[-1]} unique tokens "
              f"({self.tokens_unique}/{self.budget}), mean leaf reward {row['reward_mean']}", file=sys.stderr, flush=True)
        return row


def base_config(work: Path, args, extra: tuple[str, ...] = ()):
    chosen = [f"model.name={args.model}"] if args.model else []
    if args.sft_examples is not None:
        chosen.append(f"sft.num_examples={args.sft_examples}")
    # `extra` last: an arm's own settings (no second SFT) win over the command line's
    cfg = Config.load(demo_recipe(), [*SHARED, *(QUICK if args.quick else ()), *chosen, *args.set, *extra])
    cfg.run.output_dir = str(work)
    return cfg


def warm_start(work: Path, args) -> tuple[str, int, float, float]:
    """SFT once on the demo's worked solutions; returns (model dir, number of SFT examples, wall and CPU
    seconds)."""
    cfg = base_config(work / "sft-run", args)
    t0, cpu0 = time.monotonic(), cpu_seconds()
    trainer = Trainer(cfg, progress=False)
    sft_examples = trainer.split_examples()[0]
    sft_dir = trainer.warm_up(sft_examples)
    del trainer
    gc.collect()
    return sft_dir, cfg.sft.num_examples, time.monotonic() - t0, cpu_seconds() - cpu0


def run_arm(name: str, work: Path, args, sft_dir: str, n_sft: int, eval_examples, initial: dict | None) -> dict:
    # RL prompts start right after the SFT ones (same shuffle), as in a `treerpo run` with the warm-up on
    cfg = base_config(work / name, args,
                      (f"tree.mode={ARMS[name]}", "sft.num_examples=0", f"task.offset={n_sft}"))
    cfg.model.name = sft_dir
    shutil.rmtree(work / name, ignore_errors=True)
    marks = [round(args.budget * (i + 1) / args.evals) for i in range(args.evals)]
    trainer = BudgetTrainer(cfg, budget=args.budget, eval_examples=eval_examples, marks=marks, initial=initial,
                            max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
    t0, cpu0 = time.monotonic(), cpu_seconds()
    summary = trainer.run()
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    result = {
        "mode": cfg.tree.mode, "steps": summary["steps"],
        "initial_eval_accuracy": trainer.curve[0]["accuracy"], "final_eval_accuracy": trainer.curve[-1]["accuracy"],
        "eval_n": trainer.curve[-1]["n"], "eval_curve": trainer.curve, "reward_mean_per_step": trainer.rewards,
        "tokens_unique_per_step": trainer.step_tokens, "leaves_per_prompt_per_step": trainer.step_leaves,
        "tokens_unique": trainer.tokens_unique, "tokens_path_sum": trainer.tokens_path_sum,
        "wall_seconds": round(wall, 1), "eval_seconds": round(trainer.eval_seconds, 1),
        "train_seconds": round(wall - trainer.eval_seconds, 1), "cpu_seconds": round(cpu, 1),
        "leaves_error": summary["leaves_error"], "leaves_timeout": summary["leaves_timeout"],
    }
    for ckpt in (work / name).glob("checkpoint-*"):  # weights + optimizer state: GBs this script never reads
        shutil.rmtree(ckpt)
    del trainer
    gc.collect()
    return result


def cpu_seconds() -> float:
    """CPU time of this process (all its threads): on a shared machine it tracks the work done, where wall
    time tracks the neighbours too."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plot(results: dict, budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in results.items():
        xs = [p["tokens_unique"] for p in r["eval_curve"]]
        ax.plot(xs, [100 * p["accuracy"] for p in r["eval_curve"]], marker="o", label=f"{name} ({r['mode']})")
    ax.axvline(budget, color="grey", linestyle=":", linewidth=1, label="budget")
    n = next(iter(results.values()))["eval_n"]
    ax.set_xlabel("unique generated tokens (cumulative)")
    ax.set_ylabel(f"greedy accuracy on {n} test problems (%)")
    ax.set_title("arithmetic: TreeRPO vs GRPO at a matched token budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict) -> str:
    def reward_window(r, last: bool):
        xs = [x for x in r["reward_mean_per_step"] if x is not None]
        k = max(1, min(5, len(xs) // 2))
        part = xs[-k:] if last else xs[:k]
        return f"{sum(part) / len(part):.3f}" if part else "n/a"

    def leaves(r):
        xs = r.get("leaves_per_prompt_per_step") or []
        return f"{sum(xs) / len(xs):.1f}" if xs else "n/a"

    head = (f"{'arm':<8} {'steps':>5} {'unique tok':>10} {'path-sum tok':>12} {'acc start':>9} {'acc end':>8} "
            f"{'reward first':>12} {'reward last':>11} {'leaves/prompt':>13} {'wall s':>7}")
    lines = [head]
    for name, r in results.items():
        lines.append(f"{name:<8} {r['steps']:>5} {r['tokens_unique']:>10} {r['tokens_path_sum']:>12} "
                     f"{100 * r['initial_eval_accuracy']:>8.1f}% {100 * r['final_eval_accuracy']:>7.1f}% "
                     f"{reward_window(r, False):>12} {reward_window(r, True):>11} {leaves(r):>13} "
                     f"{r['wall_seconds']:>7.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke test: tiny-random, two steps, 4 problems")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"),
                    help="where learning.json and learning.png go")
    ap.add_argument("--work-dir", default=None, help="run directories (default: runs/learning[-quick])")
    ap.add_argument("--budget", type=int, default=None,
                    help=f"unique generated tokens per arm (default {FULL_BUDGET}, quick {QUICK_BUDGET})")
    ap.add_argument("--eval-n", type=int, default=None, help="test problems per evaluation (default 128, quick 4)")
    ap.add_argument("--evals", type=int, default=None, help="evaluations after the start, at evenly spaced token marks, the last at the budget (default 5, quick 2)")
    ap.add_argument("--sft-examples", type=int, default=None,
                    help="worked solutions for the SFT warm-up (default: the demo's 160, quick 8)")
    ap.add_argument("--model", default=None, help="model alias or directory (default: the demo's smollm2-135m)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both arms (repeatable), e.g. tree.h_th=0.05 or optim.lr=5e-6")
    ap.add_argument("--sft-dir", default=None,
                    help="reuse this SFT warm-up (an earlier run's <work-dir>/sft-run/sft) instead of training one")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - set(ARMS):
        ap.error(f"--arms takes a comma-separated subset of {', '.join(ARMS)}; got {args.arms!r}")
    if args.sft_dir and not (Path(args.sft_dir) / "config.json").is_file():
        ap.error(f"--sft-dir {args.sft_dir}: not a model directory (no config.json)")
    args.budget = args.budget or (QUICK_BUDGET if args.quick else FULL_BUDGET)
    args.eval_n = args.eval_n or (4 if args.quick else 128)
    args.evals = args.evals or (2 if args.quick else 5)
    work = Path(args.work_dir or ROOT / "runs" / ("learning-quick" if args.quick else "learning"))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not args.sft_dir:
        shutil.rmtree(work, ignore_errors=True)  # a stale SFT directory would be reused silently

    t_all = time.monotonic()
    load_start = os.getloadavg()
    if args.sft_dir:
        sft_dir, sft_seconds, sft_cpu = str(Path(args.sft_dir).resolve()), 0.0, 0.0
        n_sft = base_config(work, args).sft.num_examples  # RL prompts start after the examples it was trained on
    else:
        sft_dir, n_sft, sft_seconds, sft_cpu = warm_start(work, args)
    cfg = base_config(work, args)
    eval_examples = select(create_task(cfg).examples("test"), limit=args.eval_n, shuffle_seed=None)
    results, initial = {}, None
    for name in arms:
        print(f"learning: {name} arm, budget {args.budget} unique tokens", file=sys.stderr, flush=True)
        results[name] = run_arm(name, work, args, sft_dir, n_sft, eval_examples, initial)
        initial = {k: results[name]["eval_curve"][0][k] for k in ("accuracy", "n")}

    report = {
        "task": cfg.task.name, "model": args.model or cfg.model.name, "quick": args.quick,
        "budget_unique_tokens": args.budget, "eval_n": len(eval_examples), "eval_split": "test (first eval_n)",
        "sft_examples": n_sft, "sft_seconds": round(sft_seconds, 1),
        "sft_cpu_seconds": round(sft_cpu, 1), "total_seconds": round(time.monotonic() - t_all, 1),
        "settings": {"recipe": "recipes/demo.yaml", "shared_overrides": list(SHARED) + (list(QUICK) if args.quick else []),
                     "set": args.set, "sft_dir_reused": args.sft_dir,
                     "prompts_per_step": cfg.train.prompts_per_step, "lr": cfg.optim.lr, "n_flat": cfg.tree.n_flat,
                     "max_new_tokens": cfg.sampling.max_new_tokens, "eval_max_new_tokens": cfg.eval.max_new_tokens,
                     "tree": cfg.to_dict()["tree"]},
        # wall seconds depend on the load; CPU seconds much less so
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_avg_at_start": load_start,
                    "load_avg_at_end": os.getloadavg()},
        "arms": results,
    }
    (out / "learning.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.budget, out / "learning.png")
    print(f"wrote {out / 'learning.json'} and {out / 'learning.png'}", file=sys.stderr)
    print(table(results))
    return report


if __name__ == "__main__":
    main()
