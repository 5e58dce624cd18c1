"""Checkpoints: `OUTPUT_DIR/checkpoint-<step>/`, an HF model directory plus `trainer_state/`.

Layout (ARCHITECTURE.md, "Run directory"):

    checkpoint-<step>/
        config.json, model.safetensors, tokenizer files   <- `AutoModelForCausalLM.from_pretrained` loads this
        trainer_state/
            state.json        step, data position, phase notes; written last, so its presence marks completeness
            optimizer.bin, scheduler.bin, random_states_<rank>.pkl, ...   (accelerate's `save_state`)

Why `accelerator.save_state` for the optimizer, scheduler and RNG: it already knows how FSDP and DeepSpeed
shard optimizer state and keeps one RNG file per rank. Its own copy of the model weights is dropped (a
pre-hook empties the list) because the HF directory above already holds them; FSDP/DeepSpeed save their
sharded model state through their own path, which the hook never sees.

Atomic: everything is written to `.checkpoint-<step>.tmp/` and renamed into place, so a `kill -9` leaves
either a complete checkpoint or none; `latest_checkpoint` never returns a half-written one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

STATE_DIR = "trainer_state"
STATE_FILE = "state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / STATE_DIR / STATE_FILE).is_file() and (Path(path) / "config.json").is_file()


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def read_state(path: str | Path) -> dict:
    f = Path(path) / STATE_DIR / STATE_FILE
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read {f} ({exc})") from exc


def _drop_model_weights(models: list, weights: list, output_dir: str) -> None:
    weights.clear()  # the HF model directory beside trainer_state/ already holds them


def _skip_model_loading(models: list, input_dir: str) -> None:
    models.clear()  # the model was loaded from the HF directory; only optimizer/scheduler/RNG come from here


def register_hooks(accelerator) -> None:
    """Call once after creating the Accelerator: trainer_state/ then holds no duplicate model weights."""
    accelerator.register_save_state_pre_hook(_drop_model_weights)
    accelerator.register_load_state_pre_hook(_skip_model_loading)


def save_model_dir(accelerator, model, tokenizer, path: str | Path) -> None:
    """An HF model directory (save_pretrained + tokenizer). Collective: every rank must call it (FSDP and
    DeepSpeed gather the full state dict); only the main process writes."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(path)


def save_checkpoint(accelerator, output_dir: str | Path, step: int, *, model, tokenizer,
                    state: dict[str, Any], keep_last: int | None = None) -> Path:
    """Write `checkpoint-<step>/` atomically; collective (all ranks call it). `state` is JSON data the
    trainer needs to continue (data position, phase); `step` is stored with it. Keeps the newest
    `keep_last` checkpoints (None or 0: keep all)."""
    output_dir = Path(output_dir)
    final = checkpoint_dir(output_dir, step)
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-save
        tmp.mkdir()
    accelerator.wait_for_everyone()
    save_model_dir(accelerator, model, tokenizer, tmp)
    accelerator.save_state(str(tmp / STATE_DIR))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_DIR / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
        if final.exists():  # a re-save of the same step (e.g. the final save right after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
        if keep_last:
            prune_checkpoints(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints; returns what was deleted."""
    doomed = [p for _, p in list_checkpoints(output_dir)[:-keep_last]] if keep_last > 0 else []
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def load_checkpoint(accelerator, path: str | Path) -> dict:
    """Restore optimizer, scheduler and RNG states (the prepared objects registered with `accelerator`)
    from `path/trainer_state`, and return the saved `state` dict. The model weights must already have been
    loaded from `path` itself (it is an HF model directory)."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_DIR}/{STATE_FILE} or config.json)")
    accelerator.load_state(str(path / STATE_DIR))
    return read_state(path)
