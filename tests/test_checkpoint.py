"""Checkpoints: an HF model directory plus trainer_state/, written atomically, newest complete one found,
optimizer/scheduler/RNG restored, old ones pruned."""

from __future__ import annotations

import json

import pytest
import torch

from treerpo_core.accel import make_optimizer
from treerpo_core.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                     register_hooks, save_checkpoint)
from treerpo_core.models import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", device="cpu")


@pytest.fixture()
def trained(tiny):
    """A prepared tiny model that has taken one optimizer step (so AdamW has state to save)."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    register_hooks(acc)
    model, tok = tiny
    optimizer, scheduler = make_optimizer(model, lr=1e-3, warmup_steps=4)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    yield acc, model, tok, optimizer, scheduler
    acc.free_memory()


def test_checkpoint_is_a_loadable_model_with_trainer_state(tmp_path, trained):
    from transformers import AutoModelForCausalLM

    acc, model, tok, *_ = trained
    path = save_checkpoint(acc, tmp_path, 7, model=model, tokenizer=tok, state={"data_position": 28})
    assert path == tmp_path / "checkpoint-7"
    loaded = AutoModelForCausalLM.from_pretrained(path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    state_files = {p.name for p in (path / "trainer_state").iterdir()}
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl", "state.json"} <= state_files
    assert not any(n.endswith(".safetensors") for n in state_files)  # weights are not stored twice
    assert json.loads((path / "trainer_state" / "state.json").read_text()) == {"data_position": 28, "step": 7}
    assert not list(tmp_path.glob(".checkpoint-*"))  # the temporary directory was renamed away


def test_latest_checkpoint_skips_incomplete_and_orders_by_number(tmp_path, trained):
    acc, model, tok, *_ = trained
    save_checkpoint(acc, tmp_path, 9, model=model, tokenizer=tok, state={})
    save_checkpoint(acc, tmp_path, 10, model=model, tokenizer=tok, state={})
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # 10 > 9 numerically, not as text
    (tmp_path / "checkpoint-11").mkdir()  # a directory without trainer_state/state.json
    (tmp_path / ".checkpoint-12.tmp").mkdir()  # a save killed midway
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert latest_checkpoint(tmp_path / "nothing-here") is None
    with pytest.raises(CheckpointError, match="checkpoint-11"):
        load_checkpoint(acc, tmp_path / "checkpoint-11")


def test_keep_last_prunes_the_oldest(tmp_path, trained):
    acc, model, tok, *_ = trained
    for step in (1, 2, 3, 4):
        save_checkpoint(acc, tmp_path, step, model=model, tokenizer=tok, state={}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]


def test_load_restores_optimizer_scheduler_and_rng(tmp_path, trained):
    acc, model, tok, optimizer, scheduler = trained
    path = save_checkpoint(acc, tmp_path, 1, model=model, tokenizer=tok, state={"data_position": 4})
    expected_draw = torch.rand(3)  # what the run would have drawn next
    saved_avg = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items() if torch.is_tensor(v)}
    saved_lr = scheduler.get_last_lr()
    # wreck the live state, then restore it
    for _ in range(3):
        model(input_ids=torch.tensor([[4, 5]])).logits.sum().backward()
        optimizer.step()
        scheduler.step()
    torch.rand(10)
    assert scheduler.get_last_lr() != saved_lr
    state = load_checkpoint(acc, path)
    assert state == {"data_position": 4, "step": 1}
    assert scheduler.get_last_lr() == saved_lr
    for k, v in saved_avg.items():
        assert torch.equal(optimizer.state_dict()["state"][0][k], v), k
    assert torch.equal(torch.rand(3), expected_draw)
