"""The `boxed` math verifier: equivalences a careful grader accepts, reward hacks it refuses, pathological
inputs that must get a verdict in time, answer extraction, majority-vote comparison and caching."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from treerpo_core import plugins
from treerpo_core.types import Verdict
from treerpo_core.verify_pool import VerifierPool
from treerpo_verifiers import boxed as boxed_module
from treerpo_verifiers.boxed import BoxedVerifier, check_reference, find_last_box

CASES = [json.loads(line) for line in (Path(__file__).parent / "fixtures" / "boxed_cases.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def verifier():
    return BoxedVerifier()


@pytest.mark.parametrize("case", CASES, ids=[f"{c['class']}-{i}" for i, c in enumerate(CASES)])
def test_case_table(verifier, case):
    result = verifier.verify(case["completion"], case["reference"])
    assert result.verdict.value == case["expected"], result.reason


def test_table_covers_every_class():
    assert {c["class"] for c in CASES} == {"equivalence", "wrong", "hack", "pathological"}


def test_registered_as_boxed():
    assert isinstance(plugins.create_verifier("boxed"), BoxedVerifier)


# -- reasons for the refusals ---------------------------------------------------------------------

def test_no_box_reason(verifier):
    assert verifier.verify("The answer is 72.", "72").reason == "no boxed answer"


def test_several_values_reason(verifier):
    r = verifier.verify("\\boxed{71, 72, 73}", "72")
    assert r.verdict is Verdict.FAIL and "several values" in r.reason


def test_pm_is_refused_for_a_single_value_but_pmod_is_not_pm(verifier):
    assert "hedges with \\pm" in verifier.verify("\\boxed{\\pm 3}", "3").reason
    r = verifier.verify("\\boxed{3 \\pmod{7}}", "3")
    assert "hedges" not in r.reason


# -- pathological inputs: a verdict, in time, never an exception --------------------------------

def test_one_megabyte_completion(verifier):
    big = "x = 1 + 1. " * 100_000
    start = time.monotonic()
    assert verifier.verify(big + "\\boxed{5}", "5").verdict is Verdict.PASS
    assert verifier.verify(big, "5").verdict is Verdict.FAIL
    assert time.monotonic() - start < 2


def test_invalid_utf8(verifier):
    text = b"so \\boxed{5\xff\xfe}".decode("utf-8", "surrogateescape")
    r = verifier.verify(text, "5")
    assert r.verdict is Verdict.FAIL
    r.reason.encode("utf-8")  # the reason can be printed even though the input could not
    assert verifier.verify(b"\\boxed{5} \xff", "5").verdict is Verdict.PASS  # raw bytes are decoded


def test_deep_nesting_fails_fast(verifier):
    start = time.monotonic()
    r = verifier.verify("\\boxed{" + "\\frac{1}{" * 40 + "2" + "}" * 40 + "}", "5")
    assert r.verdict is Verdict.FAIL and "levels deep" in r.reason
    assert time.monotonic() - start < 0.5


def test_overlong_box_fails_without_parsing(verifier):
    r = verifier.verify("\\boxed{" + "1+" * 2000 + "1}", "4001")
    assert r.verdict is Verdict.FAIL and "characters long" in r.reason


def test_slow_check_is_timeout_not_fail():
    # math-verify would swallow its own timeout into False; ours is a TIMEOUT verdict
    v = BoxedVerifier(timeout_s=1.0)
    start = time.monotonic()
    r = v.verify("\\boxed{9^{9^{9^{9}}}}", "5")
    assert r.verdict is Verdict.TIMEOUT, r
    assert time.monotonic() - start < 1.5


def test_pathological_batch_through_the_pool_gets_verdicts_in_time():
    items = [
        {"completion": "\\boxed{9^{9^{9^{9}}}}", "reference": "5"},
        {"completion": "", "reference": "5"},
        {"completion": "\\boxed{" * 50_000, "reference": "5"},
        {"completion": "}" * 50_000 + "\\boxed{5}", "reference": "5"},
        {"completion": "\\boxed{5}", "reference": "5"},
    ]
    with VerifierPool("boxed", workers=2, timeout_s=1.0) as pool:
        start = time.monotonic()
        results = pool.verify(items)
        elapsed = time.monotonic() - start
    assert [r.verdict for r in results] == [Verdict.TIMEOUT, Verdict.FAIL, Verdict.FAIL, Verdict.PASS, Verdict.PASS]
    assert elapsed < 3


# -- extraction, comparison, caching ---------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{\\boxed{3}} x", "\\boxed{3}"),
    ("\\boxed {4}", "4"),
    ("\\fbox{5}", "5"),
    ("no box", None),
    ("\\boxed{  }", None),
    ("\\boxed{1} \\boxed{2", None),
])
def test_extract_answer(verifier, text, expected):
    assert verifier.extract_answer(text) == expected


def test_find_last_box_names_the_problem():
    assert find_last_box("\\boxed{1")[1] == "unbalanced braces in the last \\boxed{"
    assert find_last_box("nothing")[1] == "no boxed answer"


def test_same_answer(verifier):
    assert verifier.same_answer("0.5", "\\frac{1}{2}")
    assert verifier.same_answer("1,000", "1000")
    assert not verifier.same_answer("2", "3")
    assert not verifier.same_answer(None, "3")


def test_results_are_cached_by_answer_and_reference(monkeypatch):
    v = BoxedVerifier()
    calls = []
    import math_verify

    real = math_verify.verify
    monkeypatch.setattr(math_verify, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = v.verify("work... \\boxed{0.5}", "\\frac{1}{2}")
    second = v.verify("other work \\boxed{0.5}", "\\frac{1}{2}")  # same extracted answer
    assert first == second and first.verdict is Verdict.PASS
    assert len(calls) == 1
    v.verify("\\boxed{0.5}", "\\frac{1}{3}")
    assert len(calls) == 2


# -- references ------------------------------------------------------------------------------------

def test_reference_as_full_solution_uses_its_last_box(verifier):
    solution = "First $\\boxed{2}$ is wrong; the area is $\\boxed{\\frac{9}{2}}$."
    assert verifier.verify("\\boxed{4.5}", solution).verdict is Verdict.PASS
    assert verifier.verify("\\boxed{2}", solution).verdict is Verdict.FAIL


def test_numeric_reference_is_accepted(verifier):
    assert verifier.verify("\\boxed{72}", 72).verdict is Verdict.PASS


def test_unparseable_reference_is_error_not_fail(verifier):
    r = verifier.verify("\\boxed{5}", "\\text{hello}{")
    assert r.verdict is Verdict.ERROR and "reference" in r.reason


@pytest.mark.parametrize("reference, ok", [
    ("72", True), ("-3.5", True), ("\\frac{1}{2}", True), ("so it is \\boxed{\\sqrt{2}}.", True),
    ("\\boxed{", False), ("", False), ("\\text{hello}{", False), (None, False),
])
def test_check_reference(reference, ok):
    assert (check_reference(reference) is None) == ok


def test_reference_must_pass_against_itself():
    assert check_reference("\\frac{1}{2}") is None
    assert check_reference("\\text{hello}{") == "unbalanced braces"
    assert check_reference("\\sqrt{}").startswith("ERROR: math-verify cannot parse the reference")


def test_many_references_are_checked_in_a_pool_with_the_same_answers(monkeypatch):
    refs = ["72", "\\frac{1}{2}", "\\boxed{", "\\sqrt{}", "x^2 + 1", "", "\\{1, 2\\}"]
    expected = [check_reference(r) is None for r in refs]
    assert expected == [True, True, False, False, True, False, True]
    monkeypatch.setattr(boxed_module, "SELF_CHECK_IN_PROCESS", 1)  # force the pool
    monkeypatch.setattr(boxed_module, "VerifierPool", CountingPool)
    got = boxed_module.check_references(refs, workers=2)
    assert [p is None for p in got] == expected
    assert CountingPool.items == 4  # plain numbers and unbalanced/empty references never reach sympy


class CountingPool(VerifierPool):
    items = 0

    def verify(self, items):
        CountingPool.items += len(items)
        return super().verify(items)


def test_gsm8k_style_plain_numbers_skip_sympy(monkeypatch):
    monkeypatch.setattr(boxed_module, "_shared_checker", lambda: pytest.fail("parsed a plain number"))
    assert check_reference("1234") is None
