"""SFT core and `treerpo sft`: completion-only loss, exact packing, deterministic batches, a loadable output
model, and a resume that reproduces an uninterrupted run's weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from treerpo_cli.main import cli
from treerpo_core.config import Config
from treerpo_core.models import encode_prompt, load_model
from treerpo_core.plugins import hookimpl, plugin_registered
from treerpo_core.sft import (SFTSample, batch_for_step, encode_sft, pack_rows, row_completion_logprobs)
from treerpo_core.types import Example


def toy_examples(n: int = 12) -> list[Example]:
    out = []
    for i in range(n):
        a, b = i + 2, 2 * i + 3
        out.append(Example(id=f"toy-{i}", prompt=[{"role": "user", "content": f"What is {a} + {b}?"}],
                           reference=str(a + b), target=f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."))
    return out


class ToyTask:
    default_verifier = "boxed"
    default_delimiter = "text"
    tree_defaults: dict = {}

    def examples(self, split):
        return toy_examples()


class ToyTaskPlugin:
    @hookimpl
    def treerpo_register_tasks(self, register):
        register("toy-sum", ToyTask)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", device="cpu")


def test_completion_tokens_follow_the_generation_prompt(tiny):
    _, tok = tiny
    ex = toy_examples(1)[0]
    s = encode_sft(tok, ex, max_length=512)
    assert s.prompt_ids == encode_prompt(tok, ex.prompt)  # exactly what rollouts condition on
    text = tok.decode(s.completion_ids)
    assert text.startswith(ex.target)
    assert tok.eos_token in text  # the model learns to stop


def test_truncation_keeps_the_prompt_and_cuts_the_completion(tiny):
    _, tok = tiny
    ex = toy_examples(1)[0]
    n_prompt = len(encode_prompt(tok, ex.prompt))
    s = encode_sft(tok, ex, max_length=n_prompt + 3)
    assert len(s.completion_ids) == 3 and len(s) == n_prompt + 3


def test_missing_target_is_an_error_naming_the_example(tiny):
    _, tok = tiny
    ex = Example(id="no-target-7", prompt=[{"role": "user", "content": "hi"}], reference="1")
    with pytest.raises(ValueError, match="no-target-7"):
        encode_sft(tok, ex, max_length=64)


def test_packed_row_gives_each_sample_the_logprobs_it_has_alone(tiny):
    model, tok = tiny
    samples = [encode_sft(tok, ex, 512) for ex in toy_examples(3)]
    rows = pack_rows(samples, max_length=10_000, packing=True)
    assert len(rows) == 1 and len(rows[0]) == 3
    with torch.no_grad():
        packed = row_completion_logprobs(model, rows[0])
        alone = torch.cat([row_completion_logprobs(model, [s]) for s in samples])
    assert packed.shape == alone.shape == (sum(len(s.completion_ids) for s in samples),)
    assert torch.allclose(packed, alone, atol=1e-4)


def test_pack_rows_respects_max_length():
    samples = [SFTSample([1] * 3, [2] * 2) for _ in range(5)]  # 5 tokens each
    rows = pack_rows(samples, max_length=12, packing=True)
    assert [len(r) for r in rows] == [2, 2, 1]
    assert [len(r) for r in pack_rows(samples, 12, packing=False)] == [1] * 5


def test_batches_cover_each_epoch_once_and_depend_only_on_the_step():
    n, gb = 10, 4
    epoch0 = [i for s in range(3) for i in batch_for_step(n, s, gb, seed=0)]
    epoch1 = [i for s in range(3, 6) for i in batch_for_step(n, s, gb, seed=0)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1  # reshuffled per epoch
    assert batch_for_step(n, 4, gb, seed=0) == batch_for_step(n, 4, gb, seed=0)


def _sft(out, *extra):
    args = ["sft", "--task", "toy-sum", "--model", "tiny-random", "--output-dir", str(out),
            "--set", "sft.batch_size=4", "--set", "sft.epochs=2", "--set", "sft.lr=1e-3",
            "--set", "run.save_every=2", "--set", "run.keep_last=5", *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_sft_command_lowers_the_loss_and_writes_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM

    with plugin_registered(ToyTaskPlugin()):
        _sft(tmp_path / "out", "--set", "sft.packing=true")
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))  # 12 examples / 4 = 3 steps x 2 epochs
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert json.loads((out / "sft_complete.json").read_text())["steps"] == 6
    AutoModelForCausalLM.from_pretrained(out)  # the output directory is a model
    model, _ = load_model(str(out), device="cpu")  # and `--model DIR` takes it
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_weights(tmp_path):
    from safetensors.torch import load_file

    with plugin_registered(ToyTaskPlugin()):
        _sft(tmp_path / "full")
        # a run "killed" after step 4: only its first two checkpoints exist
        part = tmp_path / "part"
        part.mkdir()
        for name in ("checkpoint-2", "checkpoint-4"):
            shutil.copytree(tmp_path / "full" / name, part / name)
        _sft(part, "--resume")
    full = load_file(tmp_path / "full" / "model.safetensors")
    resumed = load_file(part / "model.safetensors")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.allclose(full[k], resumed[k], atol=1e-6), k
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 6]  # continued numbering, nothing before the checkpoint redone
