"""`treerpo run`: train a policy with TreeRPO (or flat GRPO) on a task; with no --task, the embedded demo."""

from __future__ import annotations

import click

from .common import config_options, load_config, user_errors


def demo_recipe() -> str:
    """Path of the embedded default recipe (recipes/demo.yaml, installed as package data)."""
    from importlib.resources import files

    return str(files("treerpo_recipes") / "demo.yaml")


@click.command("run")
@click.option("--task", "-t", "task_name", default=None, help="Registered task (default: the embedded demo).")
@click.option("--verifier", "-v", "verifier_name", default=None, help="Verifier (default: the task's).")
@click.option("--model", "-m", "model_name", default=None, help="Model alias, local directory or hub id.")
@click.option("--max-steps", type=int, default=None, help="Training steps (run.max_steps).")
@click.option("--output-dir", "-o", default=None, help="Run directory (default: runs/run-<time>).")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --output-dir.")
@click.option("--data-file", default=None, help="Local JSONL/parquet in the hub dataset's layout (offline).")
@click.option("--unsafe", is_flag=True, help="Allow verifier.sandbox=local (no isolation) for code tasks.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs only).")
@config_options
@user_errors
def run(task_name, verifier_name, model_name, max_steps, output_dir, resume, data_file, unsafe, no_progress,
        config_file, overrides):
    """Train with TreeRPO: grow reasoning trees, grade the leaves, update the policy with PPO-clipped
    tree advantages. `--set tree.mode=flat` trains plain GRPO on the same harness.

    \b
    With no --task (and no --config) this runs recipes/demo.yaml offline on a CPU: SFT warm-up of
    smollm2-135m on worked arithmetic solutions, then TreeRPO; it ends with held-out greedy accuracy before
    and after RL. With a --task the SFT warm-up is off unless sft.num_examples is set.

    \b
    The run directory gets config.yaml, metrics.jsonl, trees/step-<n>.jsonl, checkpoint-<step>/ and
    summary.json (see `treerpo report DIR`). Multi-GPU: `accelerate launch -m treerpo_cli.main run ...`.

    \b
    Examples:
      treerpo run
      treerpo run --task gsm8k --model smollm2-135m --data-file ../shared/data/gsm8k/train.jsonl --max-steps 20
      treerpo run --config recipes/paper-gsm8k.yaml
    """
    from treerpo_core.data import DataError
    from treerpo_core.models import ModelLoadError
    from treerpo_core.trainer import Trainer, TrainingError, format_summary

    if task_name is None and config_file is None:
        config_file = demo_recipe()
    cfg = load_config(config_file, overrides, **{
        "task.name": task_name, "verifier.name": verifier_name, "model.name": model_name,
        "run.max_steps": max_steps, "run.output_dir": output_dir, "task.data_file": data_file})
    try:
        trainer = Trainer(cfg, resume=resume, unsafe=unsafe, progress=not no_progress)
        summary = trainer.run()
    except (DataError, ModelLoadError, TrainingError) as exc:
        raise click.ClickException(str(exc)) from exc
    if trainer.main:
        click.echo(format_summary(summary))
