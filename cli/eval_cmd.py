"""`treerpo eval`: greedy, maj@K or pass@K accuracy of a model on a task, with a JSON report and a
resumable per-example JSONL beside it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .common import config_options, load_config, user_errors


@click.command("eval")
@click.option("--task", "-t", "task_name", default=None, help="Registered task name (see `treerpo plugins`).")
@click.option("--model", "-m", "model_name", default=None, help="Model alias, local directory or hub id.")
@click.option("--mode", default=None, help="greedy | maj@K | pass@K (default: eval.mode, greedy).")
@click.option("--samples", "num_samples", type=int, default=None,
              help="pass@K: samples drawn per example, n >= K (default K); more lower the estimate's variance.")
@click.option("--limit", type=int, default=None, help="Evaluate the first N examples of the split, in file order.")
@click.option("--split", default=None, help="Task split (default: test).")
@click.option("--data-file", default=None, help="Local JSONL/parquet in the hub dataset's layout (offline).")
@click.option("--verifier", "-v", "verifier_name", default=None, help="Verifier (default: the task's).")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Report path (default: eval-<task>-<mode>.json); per-example results go beside it.")
@click.option("--unsafe", is_flag=True, help="Allow verifier.sandbox=local (no isolation) for code tasks.")
@config_options
@user_errors
def eval_cmd(task_name, model_name, mode, num_samples, limit, split, data_file, verifier_name, output, unsafe,
             config_file, overrides):
    """Evaluate a model on a task: greedy (temperature 0), maj@K (K samples at eval.temperature 0.7 and
    eval.top_p 0.8, majority vote over the verifier's extracted answers) or pass@K (unbiased estimator,
    Chen et al. 2021).

    \b
    Writes a JSON report (accuracy, 95 % bootstrap interval, per-source breakdown, verdict counts) and a
    per-example JSONL beside it. Rerunning with the same --output skips the examples already in the JSONL.

    \b
    Example (offline):
      treerpo eval --task gsm8k --model smollm2-135m --mode maj@8 --limit 50 \\
          --data-file ../shared/data/gsm8k/test.jsonl
    """
    from treerpo_core.data import DataError
    from treerpo_core.evaluate import EvalError
    from treerpo_core.models import ModelLoadError

    cfg = load_config(config_file, overrides, **{
        "task.name": task_name, "model.name": model_name, "task.data_file": data_file,
        "eval.mode": mode, "eval.limit": limit, "verifier.name": verifier_name})
    if split is None:
        split = cfg.task.split if "task.split" in cfg.explicit else "test"
    try:
        run_eval(cfg, split=split, num_samples=num_samples, output=output, unsafe=unsafe)
    except (EvalError, DataError, ModelLoadError) as exc:
        raise click.ClickException(str(exc)) from exc


def run_eval(cfg, *, split: str, num_samples: int | None, output: str | None, unsafe: bool) -> dict:
    from tqdm import tqdm

    from treerpo_core.data import select
    from treerpo_core.evaluate import (ResultsLog, evaluate, examples_jsonl_path, parse_mode, pending,
                                       require_voting, summarize)
    from treerpo_core.models import load_model
    from treerpo_core.plugins import get_registry
    from treerpo_core.verify_pool import VerifierPool, check_sandbox_allowed

    mode = parse_mode(cfg.eval.mode, num_samples)
    core_kwargs = {"data_file": cfg.task.data_file} if cfg.task.data_file else {}
    task = get_registry().create("task", cfg.task.name, cfg.task.options, **core_kwargs)
    verifier_name = cfg.verifier.name or task.default_verifier
    check_sandbox_allowed(cfg.verifier, unsafe)
    # evaluation takes the split's first examples in file order (no shuffle), so `--limit 200` means the
    # same 200 problems everywhere and a resumed run sees the same list
    examples = select(task.examples(split), offset=cfg.task.offset, limit=cfg.eval.limit, shuffle_seed=None)
    if not examples:
        raise click.ClickException(f"task {cfg.task.name!r} split {split!r} has no examples "
                                   f"(offset {cfg.task.offset}, limit {cfg.eval.limit})")

    report_path = Path(output or f"eval-{cfg.task.name}-{mode.name}.json")
    examples_path = examples_jsonl_path(report_path)
    identity = {"task": cfg.task.name, "model": cfg.model.name, "mode": mode.name, "split": split,
                "max_new_tokens": cfg.eval.max_new_tokens}
    if mode.sampled:
        identity.update(temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, seed=cfg.run.seed)

    started = time.monotonic()
    with VerifierPool.from_config(cfg.verifier, verifier_name) as pool:
        if mode.kind == "maj":
            require_voting(pool.verifier, verifier_name)  # before any model loading or file writing
        with ResultsLog(examples_path, identity=identity) as log:
            todo = pending(examples, log.done)
            resumed = len(examples) - len(todo)
            if resumed:
                print(f"treerpo eval: {resumed} of {len(examples)} examples already in {examples_path}; "
                      "evaluating the rest", file=sys.stderr)
            if todo:
                model, tokenizer = load_model(cfg.model.name, dtype=cfg.model.dtype, options=cfg.model.options,
                                              attn_implementation=cfg.model.attn_implementation)
                with tqdm(total=len(examples), initial=resumed, desc=f"eval {mode.name}", unit="ex",
                          file=sys.stderr, dynamic_ncols=True) as bar:
                    evaluate(model, tokenizer, todo, pool, mode, max_new_tokens=cfg.eval.max_new_tokens,
                             batch_size=cfg.eval.batch_size, temperature=cfg.eval.temperature,
                             top_p=cfg.eval.top_p, seed=cfg.run.seed, on_record=log.append, progress=bar.update)
            records = [log.done[str(ex.id)] for ex in examples]

    report = {
        "task": cfg.task.name, "model": cfg.model.name, "split": split, "verifier": verifier_name,
        **summarize(records, mode, ci_seed=cfg.run.seed),
        "settings": {"max_new_tokens": cfg.eval.max_new_tokens, "batch_size": cfg.eval.batch_size,
                     **({"temperature": cfg.eval.temperature, "top_p": cfg.eval.top_p, "seed": cfg.run.seed}
                        if mode.sampled else {"temperature": 0.0})},
        "resumed_examples": resumed,
        "wall_s": round(time.monotonic() - started, 2),  # this invocation only (resumed work not included)
        "examples_file": str(examples_path),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lo, hi = report["ci95"]
    click.echo(f"{mode.name} accuracy {report['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}) on "
               f"{report['num_examples']} examples of {cfg.task.name}; report: {report_path}")
    return report
