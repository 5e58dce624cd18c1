"""`treerpo rollout`: grow trees for a few prompts, grade their leaves, write the tree dump, summarise."""

from __future__ import annotations

import collections
from pathlib import Path

import click

from .common import config_options, load_config, user_errors

DEFAULT_PROMPTS = 4


@click.command()
@click.option("--task", "-t", "task_name", required=True, help="Registered task (see `treerpo plugins`).")
@click.option("--model", "-m", "model_name", default=None, help="Model alias, hub id or directory (default: model.name).")
@click.option("--data-file", default=None, type=click.Path(dir_okay=False),
              help="Local JSONL/parquet in the hub dataset's layout (offline).")
@click.option("--num-prompts", "-n", type=int, default=None,
              help=f"Prompts to grow trees for (task.limit; default {DEFAULT_PROMPTS}).")
@click.option("--verifier", "-v", "verifier_name", default=None, help="Verifier (default: the task's).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Tree dump to write (JSONL).")
@click.option("--seed", type=int, default=None, help="Sampling seed (run.seed).")
@click.option("--unsafe", is_flag=True, help="Allow verifier.sandbox=local (no isolation) for code tasks.")
@config_options
@user_errors
def rollout(task_name, model_name, data_file, num_prompts, verifier_name, output, seed, unsafe, config_file, overrides):
    """Grow one tree per prompt (TreeRPO, paper section 3.2; tree.mode=flat for GRPO samples), grade the
    leaves with the task's verifier, fill rewards and advantages, and write one tree per line to --output.

    Task tree_defaults apply unless the config or --set overrides them; train.prompts_per_step prompts grow
    together. Example:

    \b
      treerpo rollout --task gsm8k --model smollm2-135m --data-file ../shared/data/gsm8k/test.jsonl \\
          --num-prompts 2 --set tree.l_min=16 --set tree.h_th=0.5 --output trees.jsonl
    """
    cfg = load_config(config_file, overrides, **{
        "task.name": task_name, "model.name": model_name, "task.data_file": data_file,
        "verifier.name": verifier_name, "task.limit": num_prompts, "run.seed": seed})
    if cfg.task.limit is None:
        cfg.task.limit = DEFAULT_PROMPTS
    if cfg.task.limit < 1:
        raise click.UsageError(f"--num-prompts must be at least 1, got {cfg.task.limit}")

    from tqdm.auto import tqdm

    from treerpo_core.accel import create_task
    from treerpo_core.data import select
    from treerpo_core.models import load_model
    from treerpo_core.plugins import create_delimiter
    from treerpo_core.rewards import assign_rewards, tree_metrics
    from treerpo_core.rollout.engine import TreeEngine
    from treerpo_core.trainer import grade
    from treerpo_core.verify_pool import VerifierPool, check_sandbox_allowed

    check_sandbox_allowed(cfg.verifier, unsafe)
    task = create_task(cfg)  # applies the task's tree_defaults to keys the user left alone
    verifier = cfg.verifier.name or task.default_verifier
    examples = select(task.examples(cfg.task.split), offset=cfg.task.offset, limit=cfg.task.limit,
                      shuffle_seed=cfg.task.shuffle_seed)
    if not examples:
        raise click.UsageError(f"task {cfg.task.name!r} split {cfg.task.split!r} has no examples at "
                               f"task.offset={cfg.task.offset}")
    delimiter = create_delimiter(cfg.tree.delimiter or task.default_delimiter)
    model, tokenizer = load_model(cfg.model.name, dtype=cfg.model.dtype,
                                  attn_implementation=cfg.model.attn_implementation, options=cfg.model.options)
    engine = TreeEngine(model, tokenizer, tree=cfg.tree, sampling=cfg.sampling, delimiter=delimiter)

    per_call = max(1, cfg.train.prompts_per_step)
    trees = []
    for i in tqdm(range(0, len(examples), per_call), desc="rollout", unit="batch"):
        trees += engine.grow(examples[i:i + per_call], seed=cfg.run.seed + i)
    with VerifierPool.from_config(cfg.verifier, verifier) as pool:
        grade(trees, examples, pool, tokenizer)
    for tree in trees:
        assign_rewards(tree, on_error=cfg.loss.on_error)

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(tree.to_json() + "\n" for tree in trees), encoding="utf-8")
    click.echo(summary(trees, tree_metrics(trees), out))


def summary(trees, m: dict, out: Path) -> str:
    """Per-tree means of the shape, split counts, pass rate and the unique vs path-sum token counts."""
    budgets = collections.Counter(t.info.get("budget_hit") or "none" for t in trees)
    ratio = m["tokens/unique"] / m["tokens/path_sum"] if m.get("tokens/path_sum") else float("nan")
    lines = [
        f"{len(trees)} trees written to {out}",
        f"leaves {m['tree/leaves']:.1f}  nodes {m['tree/nodes']:.1f}  depth max {m['tree/depth_max']:.1f} "
        f"mean {m['tree/depth_mean']:.2f}  (per tree)",
        f"splits forced {m['splits/forced']:.1f}  entropy {m['splits/entropy']:.1f}  coverage "
        f"{m['splits/coverage']:.1f}  (per tree)",
        f"pass rate {m.get('verdict/pass', 0.0):.1%}  fail {m.get('verdict/fail', 0.0):.1%}  error "
        f"{m.get('verdict/error', 0.0):.1%}  timeout {m.get('verdict/timeout', 0.0):.1%}  "
        f"reward mean {m.get('reward_mean', float('nan')):.3f}",
        f"tokens unique {m['tokens/unique']:.0f}  path sum {m['tokens/path_sum']:.0f}  ratio {ratio:.2f}  (per tree)",
        "budget hit: " + ", ".join(f"{k} {v}" for k, v in sorted(budgets.items())),
    ]
    return "\n".join(lines)
