"""Supervised fine-tuning on a task's worked solutions (`Example.target`), the paper's first stage (section 4:
SFT on NuminaMath-CoT, then TreeRPO) and the demo's warm-up.

Each example becomes the chat prompt (with generation prompt, exactly as rollouts see it) followed by the
target and the end-of-turn token; the loss is the mean negative log-likelihood of the completion tokens only.
Rows are fed one at a time through the packed-forward helpers of `packing.py` (a 4-D mask, log-probs read in
chunks so the vocabulary-wide logits of a long row never sit in memory at once). With `sft.packing` several
examples share a row, separated by a block-diagonal causal mask and position ids that restart per example,
so padding costs nothing.

Batches: an optimizer step sees `sft.batch_size * train.grad_accumulation * ranks` examples (the last one of
an epoch may be smaller); the order is a seeded permutation per epoch, so the data position is a function of
the step and resuming from `checkpoint-<step>` replays exactly the batches a run without the kill would have.

Output: `OUTPUT_DIR` itself becomes an HF model directory (what `treerpo run --model` and `treerpo eval
--model` load); `checkpoint-<step>/` inside it carry the optimizer state for `--resume`; `sft_complete.json`,
written last, marks a finished run.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .accel import (backward_then_sync, check_distributed, configure_deepspeed, load_trainable, make_optimizer,
                    reduce_metrics)
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_model_dir
from .config import Config
from .data import DataError
from .models import encode_prompt
from .packing import attention_inputs, chunked_logprobs, final_hidden_states
from .run_dir import MetricsLog, write_json
from .types import Example

COMPLETE_FILE = "sft_complete.json"


@dataclass
class SFTSample:
    prompt_ids: list[int]
    completion_ids: list[int]  # target + end of turn; the only tokens that carry loss

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def encode_sft(tokenizer, example: Example, max_length: int) -> SFTSample:
    """Prompt through the chat template with the generation prompt, then the target as the assistant's turn.
    Truncated from the end to `max_length` tokens; an example whose prompt alone fills it is an error."""
    if not example.target:
        raise DataError(f"example {example.id!r} has no `target` (worked solution); SFT needs one per example")
    prompt_ids = encode_prompt(tokenizer, example.prompt)
    completion = None
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(example.prompt + [{"role": "assistant", "content": example.target}],
                                             tokenize=True)
        full = list(full["input_ids"] if isinstance(full, dict) or hasattr(full, "input_ids") else full)
        if full[:len(prompt_ids)] == prompt_ids:  # the template's own end-of-turn tokens follow the target
            completion = full[len(prompt_ids):]
    if completion is None:  # no template, or one that renders the prompt differently once answered
        completion = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_length:
        raise DataError(f"example {example.id!r}: the prompt alone is {len(prompt_ids)} tokens, "
                        f"not below sft.max_length={max_length}")
    return SFTSample(prompt_ids, completion[:max_length - len(prompt_ids)])


def pack_rows(samples: list[SFTSample], max_length: int, packing: bool) -> list[list[SFTSample]]:
    """Group samples into rows: one per row, or (packing) greedily in order up to `max_length` tokens."""
    if not packing:
        return [[s] for s in samples]
    rows: list[list[SFTSample]] = []
    used = max_length
    for s in samples:
        if used + len(s) > max_length:
            rows.append([])
            used = 0
        rows[-1].append(s)
        used += len(s)
    return rows


def row_completion_logprobs(model, row: list[SFTSample]) -> torch.Tensor:
    """Log-probs [N] of every completion token of the row's samples, each seeing only its own sample."""
    inner = getattr(model, "module", model)
    device, dtype = next(inner.parameters()).device, next(inner.parameters()).dtype
    ids, positions, segment, predictors = [], [], [], []
    for k, s in enumerate(row):
        start = len(ids)
        seq = s.prompt_ids + s.completion_ids
        ids += seq
        positions += range(len(seq))
        segment += [k] * len(seq)
        first = start + len(s.prompt_ids)
        predictors += range(first - 1, first - 1 + len(s.completion_ids))  # token t is predicted at t - 1
    ids_t = torch.tensor(ids, device=device)
    # each sample is its own slot and sees only itself: a block-diagonal causal mask
    attention = attention_inputs(model, torch.tensor(segment, device=device),
                                 torch.eye(len(row), dtype=torch.bool, device=device), dtype)
    hidden = final_hidden_states(model, ids_t, attention, torch.tensor(positions, device=device))
    rows = torch.tensor(predictors, device=device)
    return chunked_logprobs(inner.get_output_embeddings(), hidden[rows], ids_t[rows + 1], 1.0)


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(f"sft-{seed}-{epoch}").shuffle(order)
    return order


def batch_for_step(n: int, step: int, global_batch: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step` (0-based): a pure function of the step, for exact resume."""
    per_epoch = math.ceil(n / global_batch)
    epoch, b = divmod(step, per_epoch)
    return epoch_order(n, epoch, seed)[b * global_batch:(b + 1) * global_batch]


def sft_complete(output_dir: str | Path) -> bool:
    return (Path(output_dir) / COMPLETE_FILE).is_file()


def train_sft(cfg: Config, accelerator, examples: list[Example], *, output_dir: str | Path,
              resume: bool = False, model_name: str | None = None, progress: bool = True) -> dict:
    """Fine-tune `model_name` (default `cfg.model.name`) on `examples`' targets; write the result to
    `output_dir` (an HF model directory). Collective: every rank calls it with the same examples. Returns a
    summary dict (also saved as `sft_complete.json`). A finished `output_dir` is left as it is."""
    output_dir = Path(output_dir)
    if sft_complete(output_dir):
        return json.loads((output_dir / COMPLETE_FILE).read_text())
    if not examples:
        raise DataError("SFT: no examples (check sft.num_examples, task.offset, task.limit)")
    ckpt = latest_checkpoint(output_dir) if resume else None
    model, tokenizer = load_trainable(cfg, accelerator, str(ckpt) if ckpt else model_name)
    samples = [encode_sft(tokenizer, ex, cfg.sft.max_length) for ex in examples]
    world = accelerator.num_processes
    global_batch = cfg.sft.batch_size * cfg.train.grad_accumulation * world
    total_steps = math.ceil(len(samples) / global_batch) * cfg.sft.epochs
    optimizer, scheduler = make_optimizer(model, lr=cfg.sft.lr, weight_decay=cfg.optim.weight_decay,
                                          warmup_steps=cfg.optim.warmup_steps)
    configure_deepspeed(accelerator, max_grad_norm=cfg.optim.max_grad_norm,
                        micro_batch=cfg.sft.batch_size * cfg.train.grad_accumulation)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    check_distributed(accelerator, model)
    start = load_checkpoint(accelerator, ckpt)["step"] if ckpt else 0
    log = MetricsLog(output_dir / "metrics.jsonl", resume_step=start) if accelerator.is_main_process else None

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start, desc="sft", disable=not (progress and accelerator.is_main_process),
               dynamic_ncols=True)
    t0, last = time.monotonic(), {}
    for step in range(start, total_steps):
        batch = [samples[i] for i in batch_for_step(len(samples), step, global_batch, cfg.run.seed)]
        n_tokens = sum(len(s.completion_ids) for s in batch)  # every rank knows the whole batch
        mine = batch[accelerator.process_index::world]
        rows = pack_rows(mine, cfg.sft.max_length, cfg.sft.packing)

        def backward_rows(backward) -> float:
            nll = 0.0
            for row in rows:
                loss = -row_completion_logprobs(model, row).sum() / n_tokens
                # DDP and DeepSpeed average gradients over ranks; scale so the result is the mean over the global
                # batch
                backward(loss * world)
                nll += float(loss.detach())
            return nll

        nll = backward_then_sync(accelerator, model, backward_rows)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        last = {"loss": reduce_metrics(accelerator, {"loss": nll}, "sum")["loss"],
                "grad_norm": None if grad_norm is None else float(grad_norm),  # None: DeepSpeed stepped without one
                "lr": scheduler.get_last_lr()[0], "tokens": n_tokens}
        if log:
            log.append({"step": step + 1, **last})
        bar.set_postfix(loss=f"{last['loss']:.3f}")
        bar.update(1)
        done = step + 1
        if cfg.run.save_every and done % cfg.run.save_every == 0 and done < total_steps:
            save_checkpoint(accelerator, output_dir, done, model=model, tokenizer=tokenizer,
                            state={"phase": "sft", "data_position": done * global_batch},
                            keep_last=cfg.run.keep_last)
    bar.close()
    summary = {"steps": total_steps, "examples": len(samples), "epochs": cfg.sft.epochs,
               "final_loss": last.get("loss"), "seconds": round(time.monotonic() - t0, 1)}
    _save_final(accelerator, model, tokenizer, output_dir, summary)
    return summary


def _save_final(accelerator, model, tokenizer, output_dir: Path, summary: dict) -> None:
    """The finished model goes into `output_dir` itself: written to a temporary directory, moved in file by
    file, and `sft_complete.json` last, so a kill mid-save leaves an incomplete run that `--resume` redoes."""
    tmp = output_dir / ".final.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_model_dir(accelerator, model, tokenizer, tmp)
    if accelerator.is_main_process:
        for f in tmp.iterdir():
            os.replace(f, output_dir / f.name)
        tmp.rmdir()
        write_json(output_dir / COMPLETE_FILE, summary)
    accelerator.wait_for_everyone()
