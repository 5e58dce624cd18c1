"""`treerpo sft`: supervised fine-tuning on a task's worked solutions; the output directory is a model."""

from __future__ import annotations

import click

from .common import config_options, load_config, user_errors


@click.command("sft")
@click.option("--task", "-t", "task_name", default=None, help="Registered task with worked solutions (`target`).")
@click.option("--model", "-m", "model_name", default=None, help="Model alias, local directory or hub id.")
@click.option("--data-file", default=None, help="Local JSONL/parquet in the hub dataset's layout (offline).")
@click.option("--output-dir", "-o", default=None, help="Where the fine-tuned model goes (default: runs/sft-<time>).")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --output-dir.")
@config_options
@user_errors
def sft(task_name, model_name, data_file, output_dir, resume, config_file, overrides):
    """Fine-tune a model on a task's chain-of-thought targets (loss on the completion tokens only).

    \b
    Examples are task.split after a seeded shuffle (task.shuffle_seed), from task.offset, sft.num_examples of
    them (0: task.limit, else all), so `--set task.offset=5000` gives a subset disjoint from an RL run's.
    Keys: sft.epochs, sft.lr, sft.batch_size, sft.max_length, sft.packing, train.grad_accumulation,
    run.save_every, run.keep_last. Works under `accelerate launch` (DDP, FSDP2, DeepSpeed ZeRO-1/2).

    \b
    The output directory is an HF model directory that `treerpo run --model` and `treerpo eval --model`
    accept; its checkpoint-<step>/ subdirectories serve --resume.

    \b
    Example (offline):
      treerpo sft --task gsm8k --model smollm2-135m --data-file ../shared/data/gsm8k/train.jsonl \\
          --set sft.num_examples=500 --output-dir runs/sft-gsm8k
    """
    from treerpo_core.accel import create_task, make_accelerator
    from treerpo_core.data import DataError, task_examples
    from treerpo_core.models import ModelLoadError
    from treerpo_core.run_dir import default_output_dir
    from treerpo_core.sft import train_sft

    cfg = load_config(config_file, overrides, **{
        "task.name": task_name, "model.name": model_name, "task.data_file": data_file, "run.output_dir": output_dir})
    out = cfg.run.output_dir or str(default_output_dir("sft"))
    try:
        task = create_task(cfg)
        examples = task_examples(task, cfg.task.split, offset=cfg.task.offset,
                                 limit=cfg.sft.num_examples or cfg.task.limit, shuffle_seed=cfg.task.shuffle_seed)
        accelerator = make_accelerator(cfg)
        summary = train_sft(cfg, accelerator, examples, output_dir=out, resume=resume)
    except (DataError, ModelLoadError) as exc:
        raise click.ClickException(str(exc)) from exc
    if accelerator.is_main_process:
        click.echo(f"sft: {summary['examples']} examples, {summary['steps']} steps, final loss "
                   f"{summary['final_loss']:.4f}; model saved in {out}")
