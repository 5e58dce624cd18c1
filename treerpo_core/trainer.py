"""The training loop, orchestration only: rollout -> verify -> rewards -> loss -> optimizer step -> log and
checkpoint. The maths lives elsewhere (rollout/, rewards.py, packing.py, loss.py); this module decides who
does what when, and where the results go.

One step (paper section 3.1, Algorithm 1), on every rank:
  1. take this rank's `train.prompts_per_step * train.grad_accumulation` prompts at the shared data position
     (ranks take consecutive slices, so together they cover the global batch exactly once);
  2. grow one tree per prompt with the current policy, `prompts_per_step` prompts at a time;
  3. grade every leaf's root-to-leaf text in the verifier pool; node rewards and sibling-relative advantages;
  4. `train.ppo_epochs` passes over the trees in `train.minibatches` minibatches, one optimizer step each,
     with the rollout's log-probs as the old policy (one epoch, one minibatch: the paper's single update);
  5. metrics averaged over ranks to `metrics.jsonl`; tree dumps and checkpoints on their schedules.

Runs with `sft.num_examples > 0` start with the SFT warm-up (sft.py) on the examples just before the RL ones,
so the two never overlap. Resume: the newest complete checkpoint restores weights, optimizer, scheduler, RNG
and the data position; rollout seeds are a function of (run.seed, step, rank), so a resumed step grows from
the same prompts with the same seed as the killed run would have.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .accel import (backward_then_sync, check_distributed, configure_deepspeed, create_task, full_parameters,
                    load_trainable,
                    make_accelerator, make_optimizer, reduce_metrics)
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import Config
from .data import DataError, select
from .models import encode_prompt
from .run_dir import MetricsLog, default_output_dir, dump_trees, read_metrics, write_json
from .types import Example, Tree, Verdict

# metric keys of ARCHITECTURE.md ("Run directory"); every metrics.jsonl row carries all of them
METRIC_KEYS = ("step", "loss", "clip_ratio", "grad_norm", "lr", "reward_mean", "verdict/pass", "verdict/fail",
               "verdict/error", "verdict/timeout", "entropy", "tree/nodes", "tree/leaves", "tree/depth_max",
               "tree/depth_mean", "splits/forced", "splits/entropy", "splits/coverage", "tokens/unique",
               "tokens/path_sum", "frac_zero_var_groups", "time/rollout", "time/verify", "time/train")


class TrainingError(RuntimeError):
    pass


@dataclass
class StepBatch:
    examples: list[Example]
    skipped_too_long: int = 0
    trees: list[Tree] = field(default_factory=list)


def rollout_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1_009 + rank


def rank_slice(examples: list[Example], position: int, per_rank: int, rank: int) -> list[Example]:
    """This rank's prompts of the step starting at global data `position` (cycling through the examples)."""
    start = position + rank * per_rank
    return [examples[(start + i) % len(examples)] for i in range(per_rank)]


def context_filter(tokenizer, examples: list[Example], context: int, max_new_tokens: int) -> tuple[list[Example], int]:
    """Drop prompts that leave no room for `max_new_tokens` in the model's context; return (kept, dropped)."""
    kept = [ex for ex in examples if len(encode_prompt(tokenizer, ex.prompt)) + max_new_tokens <= context]
    return kept, len(examples) - len(kept)


def leaf_items(tree: Tree, example: Example, tokenizer) -> list[dict]:
    """Verifier items for a tree's leaves: the decoded root-to-leaf completion, reference and metadata."""
    return [{"completion": tokenizer.decode(path, skip_special_tokens=True), "reference": example.reference,
             **(example.metadata or {})} for _, path in tree.iter_paths()]


def grade(trees: list[Tree], examples: list[Example], pool, tokenizer) -> dict[str, int]:
    """Set every leaf's verdict (one pool call for the whole step, so workers stay busy); return the
    counts of ERROR and TIMEOUT leaves, which `loss.on_error` turned into zero reward or dropped."""
    items, leaves = [], []
    for tree, ex in zip(trees, examples):
        items += leaf_items(tree, ex, tokenizer)
        leaves += tree.leaves()
    for leaf, result in zip(leaves, pool.verify(items)):
        leaf.verdict = result.verdict
    return {"leaves/error": sum(n.verdict is Verdict.ERROR for n in leaves),
            "leaves/timeout": sum(n.verdict is Verdict.TIMEOUT for n in leaves)}


def minibatches(trees: list[Tree], n: int) -> list[list[Tree]]:
    """`n` minibatches (some may be empty: every rank must take the same number of optimizer steps)."""
    return [trees[i::n] for i in range(n)]


class Trainer:
    """`treerpo run` as an object: `Trainer(cfg, resume=...).run()` returns the summary dict."""

    def __init__(self, cfg: Config, *, resume: bool = False, unsafe: bool = False, progress: bool = True):
        from .verify_pool import check_sandbox_allowed

        self.cfg, self.resume, self.progress = cfg, resume, progress
        if resume and not cfg.run.output_dir:
            raise TrainingError("--resume needs the run directory: pass --output-dir (or set run.output_dir)")
        self.out = Path(cfg.run.output_dir or default_output_dir("run"))
        if not resume and (latest_checkpoint(self.out) or (self.out / "metrics.jsonl").is_file()):
            raise TrainingError(f"{self.out} already holds a run; pass --resume to continue it, or choose "
                                "another --output-dir")
        cfg.run.output_dir = str(self.out)
        check_sandbox_allowed(cfg.verifier, unsafe)
        self.task = create_task(cfg)
        self.verifier_name = cfg.verifier.name or self.task.default_verifier
        self.accelerator = make_accelerator(cfg, log_with=_trackers(cfg.run.log_with), project_dir=str(self.out))
        self.main = self.accelerator.is_main_process

    # -- data ------------------------------------------------------------------------------------
    def split_examples(self) -> tuple[list[Example], list[Example], list[Example]]:
        """(SFT, RL, held-out): SFT takes the first sft.num_examples after the seeded shuffle and offset, RL
        the next task.limit (or all the rest); held-out is the first run.eval_limit of the test split."""
        cfg = self.cfg
        shuffled = select(self.training_rows(), shuffle_seed=cfg.task.shuffle_seed)
        n_sft = cfg.sft.num_examples
        sft = shuffled[cfg.task.offset:cfg.task.offset + n_sft]
        rl = select(shuffled, offset=cfg.task.offset + n_sft, limit=cfg.task.limit, shuffle_seed=None)
        held_out = []
        if cfg.run.eval_limit:
            try:
                held_out = select(self.task.examples("test"), limit=cfg.run.eval_limit, shuffle_seed=None)
            except (KeyError, ValueError) as exc:  # a task without a test split: no held-out accuracy
                self.note(f"no held-out accuracy: task {cfg.task.name!r} has no test split ({exc})")
        if not rl:
            raise TrainingError(f"task {cfg.task.name!r} split {cfg.task.split!r} leaves no RL examples after "
                                f"task.offset={cfg.task.offset}, sft.num_examples={n_sft}, task.limit={cfg.task.limit}")
        return sft, rl, held_out

    def training_rows(self) -> list[Example]:
        """The task.split examples. A task without that split (HumanEval has only `test`) trains on the split
        its `examples()` defaults to, unless the user chose task.split explicitly."""
        import inspect

        name, split = self.cfg.task.name, self.cfg.task.split
        try:
            return list(self.task.examples(split))
        except DataError:
            param = inspect.signature(self.task.examples).parameters.get("split")
            fallback = None if param is None or param.default is inspect.Parameter.empty else param.default
            if "task.split" in self.cfg.explicit or fallback in (None, split):
                raise
        self.note(f"task {name!r} has no {split!r} split; training on its {fallback!r} split (set task.split to "
                  "choose); the summary's accuracy is then not on held-out problems")
        return list(self.task.examples(fallback))

    def note(self, msg: str) -> None:
        if self.main:
            print(f"treerpo: {msg}", file=sys.stderr)

    # -- phases ----------------------------------------------------------------------------------
    def warm_up(self, sft_examples: list[Example]) -> str:
        """SFT when configured and not already done; returns the model the RL phase starts from."""
        from .sft import train_sft

        if not self.cfg.sft.num_examples:
            return self.cfg.model.name
        sft_dir = self.out / "sft"
        self.note(f"SFT warm-up on {len(sft_examples)} worked solutions -> {sft_dir}")
        train_sft(self.cfg, self.accelerator, sft_examples, output_dir=sft_dir, resume=self.resume,
                  progress=self.progress)
        self.accelerator.free_memory()  # the RL phase prepares a fresh model and optimizer
        return str(sft_dir)

    def held_out_accuracy(self, model, tokenizer, held_out: list[Example], pool, name: str) -> dict | None:
        """Greedy accuracy on the held-out problems, computed once per name (cached in the run directory, so a
        resumed run does not redo it). Every rank evaluates a slice; counts are summed."""
        from .evaluate import greedy_accuracy

        if not held_out:
            return None
        path = self.out / f"eval-{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        acc = self.accelerator
        mine = held_out[acc.process_index::acc.num_processes]
        was_training = model.training
        model.eval()
        r = greedy_accuracy(model, tokenizer, mine, pool, max_new_tokens=self.cfg.eval.max_new_tokens,
                            batch_size=self.cfg.eval.batch_size) if mine else {"accuracy": 0.0, "n": 0}
        model.train(was_training)
        counts = reduce_metrics(acc, {"correct": r["accuracy"] * r["n"], "n": r["n"]}, "sum")
        result = {"accuracy": counts["correct"] / max(counts["n"], 1), "n": int(counts["n"])}
        if self.main:
            write_json(path, result)
        self.note(f"greedy accuracy {name}: {result['accuracy']:.3f} on {result['n']} held-out problems")
        return result

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm.auto import tqdm

        from .loss import PolicyLoss, accumulate_policy_gradient
        from .plugins import create_delimiter
        from .rewards import assign_rewards, tree_metrics
        from .rollout.engine import TreeEngine
        from .verify_pool import VerifierPool

        cfg, acc = self.cfg, self.accelerator
        started = time.monotonic()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.yaml")
        sft_examples, examples, held_out = self.split_examples()
        ckpt = latest_checkpoint(self.out) if self.resume else None
        if self.resume and ckpt is None:
            self.note(f"no complete checkpoint in {self.out} yet; starting from the beginning")
        start_model = self.warm_up(sft_examples) if ckpt is None else None

        model, tokenizer = load_trainable(cfg, acc, str(ckpt) if ckpt else start_model)
        optimizer, scheduler = make_optimizer(model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                              warmup_steps=cfg.optim.warmup_steps)
        configure_deepspeed(acc, max_grad_norm=cfg.optim.max_grad_norm,
                            micro_batch=cfg.train.prompts_per_step * cfg.train.grad_accumulation)
        model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
        check_distributed(acc, model)
        state = load_checkpoint(acc, ckpt) if ckpt else {"step": 0, "data_position": 0}
        if ckpt:
            self.note(f"resuming from {ckpt} (step {state['step']})")
        policy = acc.unwrap_model(model)
        delimiter = create_delimiter(cfg.tree.delimiter or self.task.default_delimiter)
        engine = TreeEngine(policy, tokenizer, tree=cfg.tree, sampling=cfg.sampling, delimiter=delimiter)
        policy_loss = PolicyLoss(cfg.loss, max_new_tokens=cfg.sampling.max_new_tokens)
        context = getattr(policy.config, "max_position_embeddings", None) or math.inf
        log = MetricsLog(self.out / "metrics.jsonl", resume_step=state["step"]) if self.main else None
        if cfg.run.log_with:
            acc.init_trackers("treerpo", config=_flat(cfg.to_dict()))

        per_rank = cfg.train.prompts_per_step * cfg.train.grad_accumulation
        step, position = state["step"], state["data_position"]
        bar = tqdm(total=cfg.run.max_steps, initial=step, desc="treerpo", dynamic_ncols=True,
                   disable=not (self.progress and self.main))
        with VerifierPool.from_config(cfg.verifier, self.verifier_name) as pool:
            with full_parameters(model):  # under FSDP2, ranks generate for different lengths
                start_acc = self.held_out_accuracy(policy, tokenizer, held_out, pool,
                                                   "after-sft" if cfg.sft.num_examples else "start")
            while step < cfg.run.max_steps:
                step += 1
                t_step = time.monotonic()
                batch, skipped = context_filter(tokenizer, rank_slice(examples, position, per_rank, acc.process_index),
                                                context, cfg.sampling.max_new_tokens)
                position += per_rank * acc.num_processes
                model.eval()  # rollout: no dropout, KV cache on even with gradient checkpointing
                t0 = time.monotonic()
                trees = []
                with full_parameters(model):
                    for i in range(0, len(batch), cfg.train.prompts_per_step):
                        trees += engine.grow(batch[i:i + cfg.train.prompts_per_step],
                                             seed=rollout_seed(cfg.run.seed, step, acc.process_index) + i, step=step)
                t_rollout = time.monotonic() - t0
                t0 = time.monotonic()
                bad_leaves = grade(trees, batch, pool, tokenizer)
                for tree in trees:
                    assign_rewards(tree, on_error=cfg.loss.on_error)
                t_verify = time.monotonic() - t0

                t0 = time.monotonic()
                model.train()
                train_stats = []
                for _ in range(cfg.train.ppo_epochs):
                    for mb in minibatches(trees, cfg.train.minibatches):
                        stats = backward_then_sync(acc, model, lambda backward, mb=mb: accumulate_policy_gradient(
                            model, mb, policy_loss, temperature=cfg.sampling.temperature,
                            max_packed_tokens=cfg.train.max_packed_tokens, backward=backward))
                        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        train_stats.append({**stats, "grad_norm": _float(grad_norm)})
                t_train = time.monotonic() - t0

                row = self.step_metrics(step, trees, train_stats, tree_metrics, scheduler.get_last_lr()[0],
                                        {"time/rollout": t_rollout, "time/verify": t_verify, "time/train": t_train},
                                        {"skipped/too_long": skipped, "prompts": len(batch), **bad_leaves})
                if log:
                    log.append(row)
                if cfg.run.log_with:
                    acc.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=step)
                if cfg.run.dump_every and step % cfg.run.dump_every == 0:
                    self.dump(step, trees)
                if (cfg.run.save_every and step % cfg.run.save_every == 0) or step == cfg.run.max_steps:
                    save_checkpoint(acc, self.out, step, model=model, tokenizer=tokenizer,
                                    state={"phase": "rl", "data_position": position}, keep_last=cfg.run.keep_last)
                reward = row["reward_mean"]  # None when no leaf could be graded this step
                bar.set_postfix(reward="n/a" if reward is None else f"{reward:.3f}",
                                step_s=f"{time.monotonic() - t_step:.1f}")
                bar.update(1)
            bar.close()
            with full_parameters(model):
                end_acc = self.held_out_accuracy(policy, tokenizer, held_out, pool, "final")
        summary = self.summarize(start_acc, end_acc, time.monotonic() - started)
        if cfg.run.log_with:
            acc.end_training()
        return summary

    def step_metrics(self, step, trees, train_stats, tree_metrics, lr, times, counts) -> dict:
        """One metrics.jsonl row: this rank's tree statistics, loss figures (mean over its optimizer steps) and
        timings, averaged over ranks; counts summed. A key a rank cannot compute (no trees) is null."""
        local = dict(tree_metrics(trees)) if trees else {}
        if train_stats:
            local.update({k: sum(s[k] for s in train_stats) / len(train_stats)
                          for k in ("loss", "clip_ratio", "grad_norm")})
        local.update(times)
        # every rank reduces the same keys, in the same order
        averaged = {k: float(local.get(k, math.nan)) for k in METRIC_KEYS if k not in ("step", "lr")}
        reduced = {"step": step, "lr": lr, **reduce_metrics(self.accelerator, averaged, "mean")}
        row = {k: reduced[k] for k in METRIC_KEYS} | reduce_metrics(self.accelerator, counts, "sum")
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}

    def dump(self, step: int, trees: list[Tree]) -> None:
        from accelerate.utils import gather_object

        everyone = gather_object(trees) if self.accelerator.num_processes > 1 else trees
        if self.main:
            dump_trees(self.out, step, everyone)

    def summarize(self, start_acc: dict | None, end_acc: dict | None, seconds: float) -> dict:
        rows = read_metrics(self.out / "metrics.jsonl") if self.main else []
        rewards = [r["reward_mean"] for r in rows if r.get("reward_mean") is not None]
        k = max(1, min(5, len(rewards) // 2))
        ckpt = latest_checkpoint(self.out)
        summary = {
            "task": self.cfg.task.name, "model": self.cfg.model.name, "verifier": self.verifier_name,
            "mode": self.cfg.tree.mode, "steps": rows[-1]["step"] if rows else 0,
            "accuracy_start": start_acc, "accuracy_final": end_acc,
            "accuracy_start_label": "after SFT" if self.cfg.sft.num_examples else "before RL",
            "reward_first_steps": sum(rewards[:k]) / k if rewards else None,
            "reward_last_steps": sum(rewards[-k:]) / k if rewards else None, "reward_window": k,
            "leaves_error": sum(r.get("leaves/error", 0) for r in rows),
            "leaves_timeout": sum(r.get("leaves/timeout", 0) for r in rows),
            "skipped_too_long": sum(r.get("skipped/too_long", 0) for r in rows),
            "on_error": self.cfg.loss.on_error, "seconds_this_invocation": round(seconds, 1),
            "output_dir": str(self.out), "checkpoint": str(ckpt) if ckpt else None,
            "metrics": str(self.out / "metrics.jsonl"), "trees": str(self.out / "trees"),
        }
        if self.main:
            write_json(self.out / "summary.json", summary)
        return summary


def format_summary(s: dict) -> str:
    def pct(a):
        return f"{100 * a['accuracy']:.1f}% of {a['n']}" if a else "n/a"

    def num(x):
        return f"{x:.3f}" if x is not None else "n/a"

    return "\n".join([
        f"treerpo run finished: {s['steps']} steps of {s['mode']} on {s['task']} ({s['model']}, verifier {s['verifier']})",
        f"  greedy accuracy on held-out problems: {s['accuracy_start_label']} {pct(s['accuracy_start'])}, "
        f"after RL {pct(s['accuracy_final'])}",
        f"  mean leaf reward: first {s['reward_window']} steps {num(s['reward_first_steps'])}, "
        f"last {s['reward_window']} steps {num(s['reward_last_steps'])}",
        f"  leaves the verifier could not grade: {s['leaves_error']:.0f} errors, {s['leaves_timeout']:.0f} timeouts "
        f"(loss.on_error={s['on_error']}); prompts skipped as too long for the context: {s['skipped_too_long']:.0f}",
        f"  checkpoint: {s['checkpoint']}",
        f"  metrics:    {s['metrics']}",
        f"  trees:      {s['trees']}",
        f"  summary:    {s['output_dir']}/summary.json",
    ])


def _trackers(log_with: str | None) -> list[str] | None:
    if not log_with:
        return None
    return ["tensorboard", "wandb"] if log_with == "all" else [t.strip() for t in log_with.split(",")]


def _float(x) -> float:
    """A gradient norm as a float; NaN (logged as null) where the backend reports none."""
    return math.nan if x is None else float(x)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def train(cfg: Config, *, resume: bool = False, unsafe: bool = False, progress: bool = True) -> dict:
    return Trainer(cfg, resume=resume, unsafe=unsafe, progress=progress).run()
