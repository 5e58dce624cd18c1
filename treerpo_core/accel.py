"""accelerate set-up shared by the SFT phase and the RL trainer: one process group, the model on this rank's
device, AdamW with linear warm-up, gradient checkpointing.

DDP, FSDP2 and DeepSpeed (ZeRO-1/2) all come from `accelerate launch` and its config file; the code below
only adapts to what accelerate prepared (`backward_then_sync`, `configure_deepspeed`).
Precision: the model is loaded in `model.dtype` (auto: bf16 on a GPU that has it, fp32 on CPU) and trained in
that dtype without autocast, so the log-probs recorded at rollout and those recomputed in the loss come from
the same arithmetic and the PPO ratio is 1 at unchanged weights (ARCHITECTURE.md, "log-probs").
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from .checkpoint import register_hooks
from .config import Config


def make_accelerator(cfg: Config, *, log_with: list[str] | None = None, project_dir: str | None = None):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # several processes and no GPU (`accelerate launch --multi_gpu --num_processes 2` or torchrun on a CPU
    # machine): accelerate only picks its gloo CPU backend when told `cpu=True`. Not under a DeepSpeed config,
    # which `cpu=True` would quietly turn into DDP
    multi_cpu = (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
                 and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true")
    accelerator = Accelerator(log_with=log_with or None, project_dir=project_dir, cpu=multi_cpu)
    register_hooks(accelerator)
    # per-rank seeds differ so each rank's rollouts sample differently; resumed runs restore RNG states instead
    set_seed(cfg.run.seed, device_specific=True)
    return accelerator


def load_trainable(cfg: Config, accelerator, name: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) on this rank's device, in train mode, gradient checkpointing per config; an SDPA
    model on a CPU gets tree attention, which is SDPA outside the packed forward (tree_attention.py)."""
    from .models import load_model, strip_quantization_mark
    from .tree_attention import use_tree_attention

    model, tokenizer = load_model(name or cfg.model.name, dtype=cfg.model.dtype,
                                  attn_implementation=cfg.model.attn_implementation,
                                  device=accelerator.device, options=cfg.model.options)
    model = strip_quantization_mark(model).to(accelerator.device)  # checkpoints must load as plain models
    if accelerator.device.type == "cpu":
        # On a CPU attention is compute-bound and the dense mask's wasted work dominates: tree_forward.py
        # measured 3.98x against one row per node with tree attention, 2.82x with the dense mask (README). On a
        # GPU tree attention is one small SDPA call per segment and layer, thousands of kernel launches per pack,
        # and has not been timed there: GPUs keep SDPA over the dense mask, or take flex_attention.
        use_tree_attention(model)
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


def fsdp2_units(model) -> list:
    """The FSDP2 (`fully_shard`) modules of `model`, outermost first; empty for anything else."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_parameters(model):
    """Under FSDP2 with several ranks: all-gather every parameter once on entry and keep them gathered
    (no resharding after forward or backward) until exit; elsewhere a no-op.

    Why: FSDP2 all-gathers a unit's parameters in every forward, a collective, so ranks must run the same
    number of forwards. TreeRPO ranks do not: their trees grow to different lengths and split into different
    numbers of packs. Inside this context forwards and backwards communicate nothing (with gradient sync off,
    gradients accumulate unsharded), at the price of holding the full parameters for the step, as ZeRO-2
    does; optimizer state and reduced gradients stay sharded. Leave it before `optimizer.step()`, which
    updates the sharded parameters the next entry gathers again."""
    import torch.distributed as dist

    units = fsdp2_units(model)
    if not units or not dist.is_initialized() or dist.get_world_size() == 1:
        yield
        return
    # FSDP2's first forward initialises the root (whose parameters then stay gathered after forward, which the
    # packed forward's own lm_head call relies on); do it first, so the settings put back below are the
    # initialised ones
    units[0]._get_fsdp_state()._lazy_init()
    saved = []  # FSDP2 has no getters for these settings: keep its own values to put back
    for m in units:
        state = m._get_fsdp_state()
        saved.append((state, state._auto_reshard_after_forward,
                      [(g.post_forward_mesh_info, g.reshard_after_backward) for g in state._fsdp_param_groups]))
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.set_reshard_after_backward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
        for state, auto, groups in saved:
            state._auto_reshard_after_forward = auto
            for g, (mesh_info, after_backward) in zip(state._fsdp_param_groups, groups):
                g.post_forward_mesh_info, g.reshard_after_backward = mesh_info, after_backward


@contextlib.contextmanager
def no_gradient_sync(accelerator, model):
    """Gradient sync off for DDP (through accelerate) and for FSDP2 (directly: accelerate only knows a model
    is FSDP2 when it wrapped it itself)."""
    units = fsdp2_units(model)
    if not units:
        with accelerator.no_sync(model):
            yield
        return
    units[0].set_requires_gradient_sync(False)
    try:
        yield
    finally:
        units[0].set_requires_gradient_sync(True)


def backward_then_sync(accelerator, model, run_backwards):
    """Run `run_backwards(backward)`, which calls `backward(loss)` any number of times, so that ranks running
    different numbers of backward passes still end with the mean gradient. Returns what `run_backwards` returns.

    Why: ranks run different numbers of backward passes (trees split into different numbers of packs, SFT
    rows pack differently), and a reduction inside each backward would pair them up wrongly or deadlock.
    - DDP and FSDP2: the backwards run with gradient sync off, then one zero-valued backward with sync on
      all-reduces (reduce-scatters) the accumulated gradients. Under FSDP2 the forwards are collectives too;
      `full_parameters` keeps them silent.
    - DeepSpeed: ZeRO-2 reduces inside every backward and has no way to turn that off, so the ranks move in
      lockstep instead (`_deepspeed_backwards`)."""
    if is_deepspeed(model):
        return _deepspeed_backwards(accelerator, model, run_backwards)
    if accelerator.num_processes == 1:
        return run_backwards(accelerator.backward)
    with full_parameters(model):
        with no_gradient_sync(accelerator, model):
            out = run_backwards(accelerator.backward)
        # a real forward through the wrapper, so DDP prepares its reducer; every parameter gets a zero gradient
        accelerator.backward(_zero_loss(accelerator, model))
    return out


def is_deepspeed(model) -> bool:
    """Whether `model` is what `accelerator.prepare` returns under DeepSpeed (a `DeepSpeedEngine`)."""
    return any(c.__name__ == "DeepSpeedEngine" for c in type(model).__mro__)


def _zero_loss(accelerator, model) -> torch.Tensor:
    """A loss of exactly zero from a real one-token forward through every parameter."""
    probe = torch.zeros(1, 1, dtype=torch.long, device=accelerator.device)
    return model(input_ids=probe, use_cache=False).logits.sum() * 0.0


def _deepspeed_backwards(accelerator, model, run_backwards):
    """DeepSpeed: every rank runs as many backward passes as the busiest one, then the optimizer step.

    Before each of its backwards a rank tells the others (an all-reduce of 1); a rank that has run out of work
    answers with 0 and runs a zero-valued backward for every round in which someone else still sent 1, so the
    backwards, and the reductions ZeRO-2 does inside them, pair up one to one. The engine is driven through its
    own API (`set_gradient_accumulation_boundary`, `backward`, `step`): only the last, zero-valued backward is
    the accumulation boundary, where DeepSpeed averages the gradients over ranks, clips them to
    `optim.max_grad_norm` (put in its config by `configure_deepspeed`), steps the optimizer and scheduler and
    zeroes the gradients. The caller's `optimizer.step()`, `scheduler.step()` and `zero_grad()` are then
    accelerate's no-op DeepSpeed wrappers."""
    import torch.distributed as dist

    def anyone(flag: int) -> bool:
        t = torch.tensor([flag], device=accelerator.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def backward(loss: torch.Tensor) -> None:
        anyone(1)
        model.backward(loss)

    model.set_gradient_accumulation_boundary(False)
    out = run_backwards(backward)
    while anyone(0):
        model.backward(_zero_loss(accelerator, model))
    model.set_gradient_accumulation_boundary(True)
    model.backward(_zero_loss(accelerator, model))
    model.step()
    return out


def configure_deepspeed(accelerator, *, max_grad_norm: float, micro_batch: int) -> None:
    """Under DeepSpeed, fill the config keys the training loop relies on; call before `accelerator.prepare`.
    Elsewhere a no-op.

    - `gradient_accumulation_steps` 1: the loop accumulates over packs itself and marks the boundary
      (`_deepspeed_backwards`); DeepSpeed's own count would divide every loss by it. `train.grad_accumulation`
      is how to accumulate more prompts per step.
    - `gradient_clipping` = `optim.max_grad_norm`, since DeepSpeed clips inside its step.
    - `train_micro_batch_size_per_gpu`: prompts per rank per step, for DeepSpeed's bookkeeping only (no
      dataloader goes through `prepare` for accelerate to read it from).
    - `zero_allow_untested_optimizer`: the optimizer is torch's AdamW (`make_optimizer`).
    ZeRO-3 is refused: it gathers parameters inside every forward, and ranks generate for different lengths."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    conf = plugin.deepspeed_config
    stage = int(conf.get("zero_optimization", {}).get("stage", 0))
    if stage >= 3:
        raise RuntimeError(
            "DeepSpeed ZeRO-3 is not supported: it all-gathers parameters inside every forward, and TreeRPO ranks "
            "generate for different numbers of tokens, so those collectives would pair up wrongly or hang. Use "
            "ZeRO-1 or ZeRO-2 (`zero_stage: 2`), or FSDP2 (`fsdp_version: 2`), which shards parameters too.")
    wanted = {"gradient_accumulation_steps": 1, "gradient_clipping": float(max_grad_norm)}
    for key, value in wanted.items():
        given = conf.get(key, "auto")
        if given != "auto" and float(given) != value:
            raise RuntimeError(
                f"DeepSpeed config sets {key}={given}, but treerpo needs {value:g} there "
                + ("(accumulate with --set train.grad_accumulation=N instead)" if key.startswith("gradient_acc")
                   else "(set optim.max_grad_norm instead; DeepSpeed clips with it)")
                + "; set it to auto or remove it.")
        conf[key] = value
    if conf.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        conf["train_micro_batch_size_per_gpu"] = max(1, int(micro_batch))
    conf.setdefault("zero_allow_untested_optimizer", True)


def check_distributed(accelerator, model) -> None:
    """Refuse the sharding schemes whose collectives would pair up wrongly across TreeRPO's uneven ranks."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP and not fsdp2_units(model):
        raise RuntimeError(
            "FSDP1 is not supported (the rollout would generate from flattened, sharded parameters); set "
            "`fsdp_version: 2` in the accelerate config.")


def create_task(cfg: Config):
    """The configured task; its `tree_defaults` fill the tree keys the user did not set explicitly."""
    from .plugins import get_registry

    core_kwargs = {"data_file": cfg.task.data_file} if cfg.task.data_file else {}
    task = get_registry().create("task", cfg.task.name, cfg.task.options, **core_kwargs)
    cfg.apply_defaults("tree", getattr(task, "tree_defaults", None) or {}, source=f"task {cfg.task.name}")
    return task
