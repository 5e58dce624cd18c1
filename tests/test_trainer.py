"""The trainer's orchestration: data slicing per rank, context filtering, verifier failures counted, and a
real (tiny) training run leaving every metric key, tree dumps, a loadable checkpoint and a summary."""

from __future__ import annotations

import json

import pytest

from treerpo_core.config import Config
from treerpo_core.plugins import hookimpl, plugin_registered
from treerpo_core.run_dir import read_metrics
from treerpo_core.trainer import METRIC_KEYS, Trainer, context_filter, minibatches, rank_slice
from treerpo_core.types import Example, Tree


def ex(i: int, words: int = 3) -> Example:
    return Example(id=f"e{i}", prompt=[{"role": "user", "content": " ".join(["word"] * words)}], reference="1")


def test_ranks_take_consecutive_disjoint_slices_and_cycle():
    examples = [ex(i) for i in range(5)]
    r0 = [e.id for e in rank_slice(examples, 0, 2, rank=0)]
    r1 = [e.id for e in rank_slice(examples, 0, 2, rank=1)]
    assert r0 == ["e0", "e1"] and r1 == ["e2", "e3"]
    # the next step starts after both ranks' prompts and wraps around the end
    assert [e.id for e in rank_slice(examples, 4, 2, rank=0)] == ["e4", "e0"]


def test_prompts_that_leave_no_room_to_generate_are_dropped_and_counted():
    from treerpo_core.models import encode_prompt, load_model

    _, tok = load_model("tiny-random", device="cpu")
    short, long_ = ex(0, words=2), ex(1, words=400)
    context = len(encode_prompt(tok, short.prompt)) + 16
    kept, dropped = context_filter(tok, [short, long_], context=context, max_new_tokens=16)
    assert [e.id for e in kept] == ["e0"] and dropped == 1


def test_every_rank_gets_the_same_number_of_minibatches():
    trees = [Tree(prompt_id=str(i), prompt_token_ids=[1], reference=None) for i in range(3)]
    mbs = minibatches(trees, 4)
    assert len(mbs) == 4 and sum(len(m) for m in mbs) == 3 and mbs[3] == []


def tiny_cfg(out, *extra: str) -> Config:
    cfg = Config()
    for item in ("task.name=arithmetic", "task.options.train_size=64", "task.options.test_size=4",
                 "model.name=tiny-random", "run.max_steps=2", "run.save_every=1", "run.keep_last=1",
                 "run.dump_every=2", "run.eval_limit=2", "eval.max_new_tokens=8", "sampling.max_new_tokens=24",
                 "train.prompts_per_step=2", "optim.lr=1e-3", f"run.output_dir={out}", *extra):
        cfg.set(item)
    return cfg


def test_a_tiny_run_leaves_metrics_trees_checkpoint_and_summary(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    summary = Trainer(tiny_cfg(out), progress=False).run()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        missing = [k for k in METRIC_KEYS if k not in r]
        assert not missing, missing
        assert r["prompts"] == 2 and r["time/rollout"] > 0
    trees = [Tree.from_json(line) for line in (out / "trees" / "step-2.jsonl").read_text().splitlines()]
    assert len(trees) == 2 and all(t.step == 2 for t in trees)
    assert all(leaf.verdict is not None and leaf.reward is not None for t in trees for leaf in t.leaves())
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]  # keep_last=1
    AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["steps"] == 2 and summary["accuracy_final"]["n"] == 2
    assert Config.load(out / "config.yaml").model.name == "tiny-random"
    assert rows[-1]["lr"] == pytest.approx(1e-3)


class Broken:
    """A verifier that cannot decide anything: every leaf must come back ERROR and be counted."""

    def verify(self, completion, reference, **metadata):
        raise RuntimeError("checker crashed")


class BrokenPlugin:
    @hookimpl
    def treerpo_register_verifiers(self, register):
        register("broken", Broken)


def test_flat_mode_with_a_failing_verifier_counts_errors_and_trains_nothing(tmp_path):
    out = tmp_path / "flat"
    cfg = tiny_cfg(out, "verifier.name=broken", "tree.mode=flat", "tree.n_flat=3", "run.max_steps=1",
                   "run.dump_every=1", "run.eval_limit=0", "loss.on_error=fail")
    with plugin_registered(BrokenPlugin()):
        Trainer(cfg, progress=False).run()
    (row,) = read_metrics(out / "metrics.jsonl")
    assert row["verdict/error"] == 1.0 and row["leaves/error"] == 2 * 3
    assert row["reward_mean"] == 0.0 and row["frac_zero_var_groups"] == 1.0
    assert row["loss"] == 0.0  # every advantage is zero: nothing to learn from
    for line in (out / "trees" / "step-1.jsonl").read_text().splitlines():
        assert {n["kind"] for n in json.loads(line)["nodes"][1:]} == {"sample"}


def test_metrics_reader_drops_a_cut_last_line_and_names_a_broken_middle_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')  # killed while writing step 3
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"step": 2, "rew\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(path)
