"""accelerate set-up shared by the SFT phase and the RL trainer: one process group, the model on this rank's
device, AdamW with linear warm-up, gradient checkpointing.

DDP, FSDP and DeepSpeed all come from `accelerate launch` and its config file; nothing here names one.
Precision: the model is loaded in `model.dtype` (auto: bf16 on a GPU that has it, fp32 on CPU) and trained in
that dtype without autocast, so the log-probs recorded at rollout and those recomputed in the loss come from
the same arithmetic and the PPO ratio is 1 at unchanged weights (ARCHITECTURE.md, "log-probs").
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .checkpoint import register_hooks
from .config import Config


def make_accelerator(cfg: Config, *, log_with: list[str] | None = None, project_dir: str | None = None):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # several processes and no GPU (`accelerate launch --multi_gpu --num_processes 2` or torchrun on a CPU
    # machine): accelerate only picks its gloo CPU backend when told `cpu=True`
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(log_with=log_with or None, project_dir=project_dir, cpu=multi_cpu)
    register_hooks(accelerator)
    # per-rank seeds differ so each rank's rollouts sample differently; resumed runs restore RNG states instead
    set_seed(cfg.run.seed, device_specific=True)
    return accelerator


def load_trainable(cfg: Config, accelerator, name: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) on this rank's device, in train mode, gradient checkpointing per config."""
    from .models import load_model, strip_quantization_mark

    model, tokenizer = load_model(name or cfg.model.name, dtype=cfg.model.dtype,
                                  attn_implementation=cfg.model.attn_implementation,
                                  device=accelerator.device, options=cfg.model.options)
    model = strip_quantization_mark(model).to(accelerator.device)  # checkpoints must load as plain models
    if cfg.train.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model, tokenizer


def make_optimizer(model, *, lr: float, weight_decay: float = 0.0, warmup_steps: int = 0):
    """AdamW and a scheduler that warms up linearly over `warmup_steps` optimizer steps, then stays constant
    (the paper gives no decay)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0)
    return optimizer, scheduler


def reduce_metrics(accelerator, values: dict[str, float], reduction: str = "mean") -> dict[str, float]:
    """Average (or sum) numeric metrics over ranks; every rank must pass the same keys."""
    if accelerator.num_processes == 1 or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=accelerator.device, dtype=torch.float64)
    t = accelerator.reduce(t, reduction=reduction)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def backward_then_sync(accelerator, model, run_backwards):
    """Run `run_backwards()` (any number of `accelerator.backward` calls) with gradient sync off, then one
    zero-valued backward with sync on, which makes DDP all-reduce the accumulated gradients exactly once.

    Why: ranks run different numbers of backward passes (trees split into different numbers of packs, SFT
    rows pack differently), and DDP's all-reduce inside each backward would pair them up wrongly or deadlock.
    Returns what `run_backwards` returns."""
    if accelerator.num_processes == 1:
        return run_backwards()
    with accelerator.no_sync(model):
        out = run_backwards()
    # a real forward through the wrapper, so DDP prepares its reducer; every parameter gets a zero gradient
    probe = torch.zeros(1, 1, dtype=torch.long, device=accelerator.device)
    logits = model(input_ids=probe, use_cache=False).logits
    accelerator.backward(logits.sum() * 0.0)
    return out


def create_task(cfg: Config):
    """The configured task; its `tree_defaults` fill the tree keys the user did not set explicitly."""
    from .plugins import get_registry

    core_kwargs = {"data_file": cfg.task.data_file} if cfg.task.data_file else {}
    task = get_registry().create("task", cfg.task.name, cfg.task.options, **core_kwargs)
    cfg.apply_defaults("tree", getattr(task, "tree_defaults", None) or {}, source=f"task {cfg.task.name}")
    return task
