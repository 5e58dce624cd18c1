"""Evaluation maths and loop: the pass@k estimator against hand-computed binomials, the majority vote's
grouping and tie rule, the bootstrap interval, the resumable per-example log, and greedy determinism."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch

from treerpo_core import plugins
from treerpo_core.evaluate import (
    EvalError, EvalMode, ResultsLog, bootstrap_ci, evaluate, examples_jsonl_path, generate, greedy_accuracy,
    majority_vote, parse_mode, pass_at_k, pending, summarize,
)
from treerpo_core.models import encode_prompt, load_model
from treerpo_core.plugins import hookimpl
from treerpo_core.types import Example, Verdict, VerifyResult
from treerpo_core.verify_pool import VerifierPool


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a small shared CPU, two threads fighting other processes make each tiny-model
    step ~10x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- pass@k -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),  # pass@1 is the fraction correct
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (8, 0, 4, 0.0),  # nothing passes
    (4, 2, 3, 1.0),  # only 2 failures: every 3-subset holds a pass
    (3, 3, 3, 1.0),
])
def test_pass_at_k_matches_hand_computed_binomials(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    n, c, k = 2000, 1000, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))  # C(2000,100) ~ 1e188... far past 1e308 for larger
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    n, c, k = 5000, 10, 400  # C(5000, 400) is ~1e600: float(math.comb) would overflow
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)


# -- majority vote ----------------------------------------------------------------------------------
def numeric_same(a: str, b: str) -> bool:
    return Fraction(a) == Fraction(b)


def test_vote_groups_with_same_answer_not_string_equality():
    answers = ["3", "0.5", "1/2", "2/4"]
    assert majority_vote(answers, numeric_same) == (1, 3)  # one value written three ways outvotes "3"
    assert majority_vote(answers, str.__eq__) == (0, 1)  # string equality would see four singletons


def test_vote_tie_goes_to_the_group_seen_first():
    assert majority_vote(["7", "1/2", "0.5", "7"], numeric_same) == (0, 2)
    assert majority_vote(["1/2", "7", "7", "0.5"], numeric_same) == (0, 2)


def test_samples_without_an_answer_do_not_vote():
    assert majority_vote([None, None, "4", None], numeric_same) == (2, 1)
    assert majority_vote([None, None], numeric_same) == (None, 0)


def test_parse_mode():
    assert parse_mode("greedy") == EvalMode("greedy", 1, 1)
    assert parse_mode("maj@8") == EvalMode("maj", 8, 8)
    assert parse_mode("pass@1", num_samples=10) == EvalMode("pass", 1, 10)
    for bad, match in [("maj@0", "K >= 1"), ("top@3", "greedy, maj@K or pass@K"), ("maj@4", "votes over exactly")]:
        with pytest.raises(EvalError, match=match):
            parse_mode(bad, num_samples=5 if bad == "maj@4" else None)
    with pytest.raises(EvalError, match="at least 5 samples"):
        parse_mode("pass@5", num_samples=2)


# -- bootstrap interval and report ------------------------------------------------------------------
def test_bootstrap_ci_is_degenerate_for_constant_scores():
    assert bootstrap_ci([1.0] * 50) == (1.0, 1.0)
    assert bootstrap_ci([0.0] * 50) == (0.0, 0.0)


def test_bootstrap_ci_brackets_the_mean_with_the_normal_width():
    scores = [1.0, 0.0] * 200  # mean 0.5, n 400: normal 95 % half-width 1.96 * sqrt(0.25 / 400) = 0.049
    lo, hi = bootstrap_ci(scores, resamples=2000, seed=1)
    assert lo < 0.5 < hi
    assert 0.035 < 0.5 - lo < 0.065 and 0.035 < hi - 0.5 < 0.065
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)


def test_summary_counts_error_and_timeout_apart_and_breaks_down_by_source():
    records = [
        {"score": 1.0, "verdicts": ["PASS"], "source": "amc"},
        {"score": 0.0, "verdicts": ["ERROR"], "source": "amc"},
        {"score": 0.0, "verdicts": ["TIMEOUT"], "source": "gsm"},
        {"score": 1.0, "verdicts": ["PASS"], "source": "gsm"},
        {"score": 1.0, "verdicts": ["PASS"], "source": "gsm"},
    ]
    s = summarize(records, EvalMode("greedy"))
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["verdicts"] == {"PASS": 3, "FAIL": 0, "ERROR": 1, "TIMEOUT": 1}
    assert s["by_source"] == {"amc": {"accuracy": 0.5, "num_examples": 2},
                              "gsm": {"accuracy": pytest.approx(2 / 3), "num_examples": 3}}
    assert "by_source" not in summarize([{"score": 1.0, "verdicts": ["PASS"], "source": None}], EvalMode("greedy"))


# -- the loop, with a tiny model and a scripted verifier -------------------------------------------
class ByReference:
    """Grades by the example's reference, whatever the model wrote: "pass", "fail", "error", "timeout".
    Its answers are the completion's length mod 2, so votes are real but predictable from the text."""

    def __init__(self):
        self.checked = 0

    def verify(self, completion, reference, **metadata):
        raise AssertionError("verify_batch is used")

    def verify_batch(self, items):
        self.checked += len(items)
        return [VerifyResult(Verdict(it["reference"].upper())) for it in items]

    def extract_answer(self, completion):
        return str(len(completion) % 2)

    def same_answer(self, a, b):
        return a == b


class VerifyOnly:
    def verify(self, completion, reference, **metadata):
        return VerifyResult(Verdict.PASS)


class TestPlugin:
    @hookimpl
    def treerpo_register_verifiers(self, register):
        register("by-reference", ByReference)
        register("verify-only", VerifyOnly)


@pytest.fixture
def pool():
    with plugins.plugin_registered(TestPlugin(), "test-eval"):
        with VerifierPool("by-reference", workers=1) as p:
            yield p


@pytest.fixture(scope="module")
def varied_model():
    """tiny-random with its weights spread out: the stock initialisation copies the last prompt token
    ("\\n") forever, which would make every determinism check pass trivially."""
    model, tokenizer = load_model("tiny-random", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5, generator=g)
    return model, tokenizer


def make_examples(refs):
    return [Example(id=f"q{i}", prompt=[{"role": "user", "content": f"Compute {i} * {i + 3}."}], reference=r,
                    metadata={"source": "even" if i % 2 == 0 else "odd"})
            for i, r in enumerate(refs)]


def test_greedy_generation_is_deterministic_and_independent_of_batching(varied_model):
    model, tokenizer = varied_model
    prompts = [encode_prompt(tokenizer, ex.prompt) for ex in make_examples(["pass"] * 3)]
    prompts[1] = prompts[1] + prompts[1][:5]  # unequal lengths: left padding must not change the output
    one_by_one = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=1)
    batched = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=3)
    assert len(set(one_by_one)) > 1 and all(t.strip() for t in one_by_one)  # varied, non-empty text
    assert batched == one_by_one
    assert generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=3) == batched


def test_greedy_decoding_matches_transformers_generate(varied_model):
    """The own decode loop (rows leave the batch at EOS) must produce what `model.generate` produces for each
    prompt alone, unpadded: the reference implementation of greedy decoding."""
    from transformers import GenerationConfig

    model, tokenizer = varied_model
    prompts = [encode_prompt(tokenizer, ex.prompt) for ex in make_examples(["pass"] * 3)]
    prompts[0] = prompts[0] + prompts[0][:7]
    ours = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    cfg = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)
    for p, text in zip(prompts, ours):
        ref = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             generation_config=cfg)
        assert text == tokenizer.decode(ref[0, len(p):], skip_special_tokens=True)


def test_finished_rows_leave_the_batch_and_stop_at_eos():
    """A fake model whose row r emits EOS after r + 1 tokens: each row stops there, and the forward passes
    see the batch shrink as rows finish."""
    from treerpo_core.evaluate import decode_batch

    EOS, V = 0, 5
    batch_sizes = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, position_ids, cache=None, use_cache=True, logits_to_keep=0):
            batch_sizes.append(input_ids.shape[0])
            rows = cache["rows"] if cache else torch.arange(input_ids.shape[0])
            steps = (cache["steps"] + 1) if cache else 0
            logits = torch.full((input_ids.shape[0], 1, V), -1e9)
            for i, r in enumerate(rows.tolist()):
                logits[i, 0, EOS if steps >= r else 3] = 0.0
            new = {"rows": rows, "steps": steps}
            return type("Out", (), {"logits": logits, "cache": _Selectable(new)})()

    class _Selectable(dict):
        def batch_select_indices(self, keep):
            self["rows"] = self["rows"][keep]

    out = decode_batch(Counting(), [[1, 2], [1], [2, 2, 2]], pad_id=4, eos_ids=[EOS], max_new_tokens=10)
    assert out == [[EOS], [3, EOS], [3, 3, EOS]]
    assert batch_sizes == [3, 2, 1]


def test_top_p_keeps_the_smallest_set_reaching_p():
    from treerpo_core.evaluate import _next_token

    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5, 0.3 (cumulative 0.8), 0.15, 0.05
    logits = probs.log().expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    draws = _next_token(logits, 1.0, 0.8, g)
    assert set(draws.tolist()) == {1, 3}  # tokens 2 and 0 lie past the 0.8 nucleus
    assert (draws == 1).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.03)  # renormalised
    assert set(_next_token(logits, 1.0, 0.5, g).tolist()) == {1}  # the top token alone reaches 0.5
    assert _next_token(logits, 0.0, 0.8, g).tolist() == [1] * 4000  # temperature 0: argmax


def test_greedy_accuracy_counts_verdicts_and_restores_train_mode(varied_model, pool):
    model, tokenizer = varied_model
    model.train()
    out = greedy_accuracy(model, tokenizer, make_examples(["pass", "fail", "error", "pass", "timeout"]), pool,
                          max_new_tokens=4, batch_size=2)
    assert out == {"accuracy": 2 / 5, "n": 5, "verdicts": {"PASS": 2, "FAIL": 1, "ERROR": 1, "TIMEOUT": 1}}
    assert model.training
    model.eval()


def test_majority_and_pass_records_follow_their_samples(varied_model, pool):
    model, tokenizer = varied_model
    examples = make_examples(["pass", "fail"])
    maj = evaluate(model, tokenizer, examples, pool, parse_mode("maj@4"), max_new_tokens=6, batch_size=8, seed=0)
    for rec in maj:
        assert len(rec["samples"]) == 4
        assert rec["answers"] == [str(len(s) % 2) for s in rec["samples"]]
        assert (rec["majority_index"], rec["majority_votes"]) == majority_vote(rec["answers"], str.__eq__)
    assert [r["score"] for r in maj] == [1.0, 0.0]
    passk = evaluate(model, tokenizer, examples, pool, parse_mode("pass@2", num_samples=3), max_new_tokens=6, batch_size=8)
    assert [(r["num_correct"], r["score"]) for r in passk] == [(3, 1.0), (0, 0.0)]


def test_sampling_is_seeded_per_chunk(varied_model, pool):
    model, tokenizer = varied_model
    examples = make_examples(["pass", "fail", "pass"])
    run = lambda exs, seed: [r["samples"] for r in evaluate(model, tokenizer, exs, pool, parse_mode("pass@2"),
                                                            max_new_tokens=6, batch_size=2, seed=seed)]
    full = run(examples, 0)
    assert run(examples, 0) == full
    assert run(examples[2:], 0) == full[2:]  # a resumed run draws the same samples for what is left
    assert run(examples, 1) != full


def test_maj_needs_a_verifier_that_extracts_and_compares_answers(varied_model):
    model, tokenizer = varied_model
    with plugins.plugin_registered(TestPlugin(), "test-eval"), VerifierPool("verify-only", workers=1) as p:
        with pytest.raises(EvalError, match="verifier 'verify-only' has no extract_answer or same_answer"):
            evaluate(model, tokenizer, make_examples(["pass"]), p, parse_mode("maj@2"), max_new_tokens=2)


# -- resumption -------------------------------------------------------------------------------------
IDENTITY = {"task": "t", "model": "m", "mode": "greedy"}


class Crash(RuntimeError):
    pass


def test_interrupted_evaluation_resumes_with_only_the_missing_examples(varied_model, pool, tmp_path):
    model, tokenizer = varied_model
    examples = make_examples(["pass", "fail", "pass", "error", "pass"])
    path = examples_jsonl_path(tmp_path / "report.json")
    assert path.name == "report.examples.jsonl"

    with ResultsLog(path, identity=IDENTITY) as log:
        def append_then_crash(rec):
            log.append(rec)
            if len(log.done) == 3:
                raise Crash()
        with pytest.raises(Crash):
            evaluate(model, tokenizer, examples, pool, EvalMode("greedy"), max_new_tokens=4, batch_size=2,
                     on_record=append_then_crash)
    checked_before = pool.verifier.checked

    with ResultsLog(path, identity=IDENTITY) as log:
        assert sorted(log.done) == ["q0", "q1", "q2"]
        todo = pending(examples, log.done)
        assert [ex.id for ex in todo] == ["q3", "q4"]
        evaluate(model, tokenizer, todo, pool, EvalMode("greedy"), max_new_tokens=4, batch_size=2, on_record=log.append)
    assert pool.verifier.checked - checked_before == 2  # only the missing examples were generated and graded
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["q0", "q1", "q2", "q3", "q4"]
    assert all(r["model"] == "m" for r in lines)


def test_torn_last_line_is_cut_off_and_redone(tmp_path):
    path = tmp_path / "r.examples.jsonl"
    good = json.dumps({**IDENTITY, "id": "a", "score": 1.0, "verdicts": ["PASS"]})
    path.write_text(good + "\n" + '{"task": "t", "model": "m", "id": "b", "sco')  # crash mid-write
    with ResultsLog(path, identity=IDENTITY) as log:
        assert list(log.done) == ["a"]
        log.append({"id": "b", "score": 0.0, "verdicts": ["FAIL"]})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_results_of_another_mode_are_not_mixed_in(tmp_path):
    path = tmp_path / "r.examples.jsonl"
    path.write_text(json.dumps({**IDENTITY, "mode": "maj@8", "id": "a"}) + "\n")
    with pytest.raises(EvalError, match="mode='maj@8', not 'greedy'.*different --output"):
        ResultsLog(path, identity=IDENTITY)
