"""Verifier `boxed`: the last `\\boxed{...}` (or `\\fbox{...}`) of a completion, compared with the reference by
math-verify (`parse` / `verify`).

It decides every reward of the paper's math recipe, so it is written against both failure directions:

- accept what a careful grader accepts: `1/2` = `0.5` = `\\dfrac12`, `1,000` = `1{,}000` = `1\\,000` = `1000`,
  trailing units / currency / percent / `\\text{}`, `x = 4` for `4`, sets and unordered answers in any order,
  symbolically equal expressions (math-verify does most of this; we add thin-space thousands and bare
  word units such as `18 dollars`);
- refuse reward hacks: only the last top-level box counts; several values (a set, a list, `\\pm`, "5 or 6")
  for a single-valued reference fail; a completion without a box fails with reason "no boxed answer"; an
  empty box fails; an absurdly long box fails without being parsed.

Timeouts: math-verify's own timeout uses `signal.alarm` and swallows its expiry into `False` (a silent FAIL).
We call it with its timeouts off. Inside the pool's workers the pool's hard kill ends a slow check (TIMEOUT)
and replaces the worker: interrupting Python code with a signal can leave a half-done import or cache behind
and poison every later check of that process (seen here: after an interrupted first sympy import, every
reference "could not be parsed"), so a worker never interrupts itself. Called in-process in a main thread
(e.g. `same_answer` during evaluation) we arm our own timer, after a warm-up that completes sympy's lazy
imports, and turn its expiry into a TIMEOUT verdict.

References: a bare answer (`72`, `\\frac{1}{2}`, GSM8K style) or a full solution containing `\\boxed{}`
(NuminaMath style), whose last box is the answer. Tasks call `check_reference` at load time so a reference
math-verify cannot parse is skipped with a warning instead of silently rewarding nothing.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator

from treerpo_core.plugins import hookimpl
from treerpo_core.types import Verdict, VerifyResult
from treerpo_core.verify_pool import VerifierPool, in_worker

# math-verify warns once that its timeouts are off; we time checks ourselves (module docstring)
logging.getLogger("math_verify").setLevel(logging.ERROR)

MAX_ANSWER_CHARS = 1000  # a longer "answer" is a dump, not an answer; parsing it could take seconds
# math-verify's LaTeX parser is exponential in nesting (10 levels of {} take 2 s here, 15 levels over 16 s);
# real answers nest 2-4 levels (`\\frac{\\sqrt{2}}{2}`), so deeper ones fail fast instead of timing out
MAX_NESTING = 8
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PLAIN_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
# 1\,000 / 1\;000 / 1\ 000 / 1~000: thousands written with LaTeX spaces (math-verify reads `\,` as a product)
_SPACED_THOUSANDS = re.compile(r"(?<=\d)(?:\\[,;: ]|~|\\thinspace\s*)(?=\d{3}(?!\d))")
# "18 dollars", "12.5 cm": a number followed by plain words, which math-verify would read as a product
_NUMBER_THEN_WORDS = re.compile(r"\s*([-+]?\\?\$?\s*\d[\d,]*(?:\.\d+)?)\s*(?:[A-Za-z]{2,}\.?\s*)+")
_PLUS_MINUS = re.compile(r"\\(?:pm|mp)(?![A-Za-z])|[±∓]")  # not \pmod


class CheckTimeout(BaseException):
    """Raised by our timer. A BaseException, so math-verify's `except Exception` cannot swallow it."""


def find_last_box(text: str) -> tuple[str | None, str]:
    """Content of the last top-level `\\boxed{...}`/`\\fbox{...}` and a note on why there is none.

    Braces are matched with escapes (`\\{`, `\\}`) skipped, so `\\boxed{\\{1,2\\}}` holds a set. A box inside
    a box belongs to the outer one. Linear in the text length (a 1 MB completion is fine)."""
    found: str | None = None
    note = "no boxed answer"
    pos = 0
    while True:
        m = _BOX_START.search(text, pos)
        if m is None:
            return found, note
        depth, i, n = 1, m.end(), len(text)
        while i < n and depth:
            c = text[i]
            if c == "\\":
                i += 2
                continue
            depth += (c == "{") - (c == "}")
            i += 1
        if depth:  # ran off the end: an unclosed box; a box that came earlier no longer counts as "last"
            return None, "unbalanced braces in the last \\boxed{"
        found, note = text[m.end(): i - 1], ""
        pos = i


def nesting_depth(text: str) -> int:
    """Deepest nesting of (), [] and {} (unescaped or not: both cost the parser)."""
    depth = deepest = 0
    for c in text:
        if c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth = max(0, depth - 1)
    return deepest


def reference_answer(reference: Any) -> str:
    """The answer in a reference: its last box when it has one (a full solution), else the reference itself."""
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return str(reference)
    if not isinstance(reference, str):
        raise ValueError(f"reference must be a string or a number, got {type(reference).__name__}")
    if _BOX_START.search(reference):
        boxed, note = find_last_box(reference)
        if boxed is None:
            raise ValueError(f"reference has {note}")
        return boxed.strip()
    return reference.strip()


def normalize_answer(answer: str) -> str:
    """Rewrites math-verify does not do itself: LaTeX-spaced thousands and bare word units after a number."""
    answer = _SPACED_THOUSANDS.sub("", answer.strip())
    if answer.endswith(".") and not answer.endswith(".."):  # "\\boxed{3.}": a sentence's period
        answer = answer[:-1].rstrip()
    m = _NUMBER_THEN_WORDS.fullmatch(answer)
    if m:
        answer = m.group(1)
    return answer


def _show(text: str, limit: int = 60) -> str:
    """Text safe to put in a reason: quoted, truncated, and surrogates (invalid UTF-8 input) escaped."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return "`" + text.encode("utf-8", "backslashreplace").decode("utf-8") + "`"


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise CheckTimeout after `seconds`, when we own the main thread's timer; otherwise do nothing."""
    usable = (seconds > 0 and not in_worker() and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise CheckTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _is_multi_valued(value: Any) -> bool:
    """A set / tuple / interval / list of several values: an answer that names more than one thing."""
    from sympy import FiniteSet, Interval, Tuple, Union
    from sympy import Set as SympySet

    if isinstance(value, (FiniteSet, Tuple, list, tuple)):
        return len(value) > 1
    return isinstance(value, (Interval, Union, SympySet))


class BoxedVerifier:
    """PASS when the last box of the completion equals the reference's answer (see the module docstring)."""

    def __init__(self, timeout_s: float = 5.0, cache_size: int = 65536):
        # leave a margin under the pool's hard limit, so a slow check ends as our TIMEOUT rather than a kill
        self.time_budget_s = 0.8 * float(timeout_s)
        self.cache_size = cache_size
        self._results: OrderedDict[tuple[str, str], VerifyResult] = OrderedDict()
        self._parsed: OrderedDict[str, list] = OrderedDict()
        # Import and warm up sympy/math-verify here, with no time limit (~1 s: the first symbolic comparison
        # pulls in lazily imported sympy modules). An interrupted import would poison the process, and the
        # pool's forked workers inherit the warm modules, so their first check is not slow either.
        self._decide("x^2+2x+1", "(x+1)^2")

    # -- math-verify, cached ---------------------------------------------------------------------
    def _parse(self, answer: str) -> list:
        if answer in self._parsed:
            self._parsed.move_to_end(answer)
            return self._parsed[answer]
        from math_verify import parse

        parsed = parse("\\boxed{" + answer + "}", parsing_timeout=None)
        self._remember(self._parsed, answer, parsed)
        return parsed

    def _remember(self, cache: OrderedDict, key: Any, value: Any) -> None:
        cache[key] = value
        if len(cache) > self.cache_size:
            cache.popitem(last=False)

    @staticmethod
    def _usable(parsed: list) -> bool:
        from sympy import Basic, MatrixBase

        return bool(parsed) and isinstance(parsed[0], (Basic, MatrixBase))

    # -- the verifier protocol -------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """The last boxed answer, stripped; None when there is none or it is empty."""
        if isinstance(completion, bytes):
            completion = completion.decode("utf-8", "replace")
        if not isinstance(completion, str):
            return None
        boxed, _ = find_last_box(completion)
        boxed = boxed.strip() if boxed is not None else None
        return boxed or None

    def same_answer(self, a: str | None, b: str | None) -> bool:
        """Whether two extracted answers are the same (majority voting groups answers with this)."""
        if a is None or b is None:
            return False
        if a.strip() == b.strip():
            return True
        return self._compare(normalize_answer(a), normalize_answer(b)).verdict is Verdict.PASS

    def verify(self, completion: str, reference: Any, **metadata) -> VerifyResult:
        if isinstance(completion, bytes):
            completion = completion.decode("utf-8", "replace")
        if not isinstance(completion, str):
            return VerifyResult(Verdict.ERROR, f"completion must be text, got {type(completion).__name__}")
        try:
            ref = reference_answer(reference)
        except ValueError as exc:
            return VerifyResult(Verdict.ERROR, f"bad reference: {exc}")
        boxed, note = find_last_box(completion)
        if boxed is None:
            return VerifyResult(Verdict.FAIL, note)
        answer = boxed.strip()
        if not answer or not answer.replace("\\,", "").replace("\\ ", "").strip():
            return VerifyResult(Verdict.FAIL, "empty \\boxed{}")
        if len(answer) > MAX_ANSWER_CHARS:
            return VerifyResult(Verdict.FAIL, f"boxed answer is {len(answer)} characters long (limit {MAX_ANSWER_CHARS})")
        if nesting_depth(answer) > MAX_NESTING:
            return VerifyResult(Verdict.FAIL, f"boxed answer nests {nesting_depth(answer)} levels deep (limit {MAX_NESTING})")
        return self._compare(ref, normalize_answer(answer))

    def _compare(self, ref: str, answer: str) -> VerifyResult:
        key = (answer, ref)
        if key in self._results:
            self._results.move_to_end(key)
            return self._results[key]
        try:
            with _time_limit(self.time_budget_s):
                result = self._decide(ref, answer)
        except CheckTimeout:
            # not cached: a slow machine might decide it next time
            return VerifyResult(Verdict.TIMEOUT, f"math-verify took over {self.time_budget_s:.2g}s on {_show(answer)}")
        except RecursionError:
            result = VerifyResult(Verdict.FAIL, f"answer {_show(answer)} is nested too deeply to parse")
        self._remember(self._results, key, result)
        return result

    def _decide(self, ref: str, answer: str) -> VerifyResult:
        from math_verify import verify

        gold = self._parse(normalize_answer(ref))
        if not self._usable(gold):
            return VerifyResult(Verdict.ERROR, f"math-verify cannot parse the reference {_show(ref)}")
        single = not _is_multi_valued(gold[0])
        if single and _PLUS_MINUS.search(answer) and not _PLUS_MINUS.search(ref):
            return VerifyResult(Verdict.FAIL, f"answer {_show(answer)} hedges with \\pm; the reference is one value")
        pred = self._parse(answer)
        if not self._usable(pred):
            return VerifyResult(Verdict.FAIL, f"could not parse the boxed answer {_show(answer)}")
        if single and _is_multi_valued(pred[0]):
            return VerifyResult(Verdict.FAIL, f"answer {_show(answer)} lists several values; the reference is one value")
        if verify(gold, pred, timeout_seconds=None):
            return VerifyResult(Verdict.PASS, f"{_show(answer)} equals {_show(ref)}")
        return VerifyResult(Verdict.FAIL, f"{_show(answer)} does not equal {_show(ref)}")


# -- reference checks at task load time --------------------------------------------------------------

SELF_CHECK_IN_PROCESS = 200  # up to this many references are checked in-process; more go through a pool


def _self_check_item(reference: Any) -> dict:
    """A completion that boxes the reference's own answer: a usable reference must PASS against itself."""
    return {"completion": "\\boxed{" + reference_answer(reference) + "}", "reference": reference}


def _problem(result: VerifyResult) -> str | None:
    return None if result.verdict is Verdict.PASS else f"{result.verdict.value}: {result.reason}"


def _quick_problem(reference: Any) -> str | None | bool:
    """A verdict that needs no sympy: a reason, None (fine), or False (needs the full self-check)."""
    try:
        ref = reference_answer(reference)
    except ValueError as exc:
        return str(exc)
    if not ref:
        return "empty reference"
    if _PLAIN_NUMBER.fullmatch(ref):  # GSM8K's integer answers: no need to start sympy
        return None
    if find_last_box("\\boxed{" + ref + "}")[0] != ref:
        return "unbalanced braces"
    return False


def check_reference(reference: Any) -> str | None:
    """Why this reference cannot be graded, or None when it can. A reference is usable when math-verify parses
    it and its own answer, boxed, PASSes against it (otherwise no completion could ever pass). Tasks call this
    while loading, so a bad reference is skipped with a warning instead of a silent reward of 0."""
    quick = _quick_problem(reference)
    if quick is not False:
        return quick
    return _problem(_shared_checker().verify(**_self_check_item(reference)))


def check_references(references: list[Any], workers: int | None = None, timeout_s: float = 10.0) -> list[str | None]:
    """`check_reference` for many references; past SELF_CHECK_IN_PROCESS of them the self-checks run in a
    verifier pool: at a few ms each, NuminaMath-CoT's 860k references are CPU-minutes of sympy, so they are
    spread over up to 8 processes, each check under a hard time limit."""
    problems: list[str | None | bool] = [_quick_problem(r) for r in references]
    todo = [i for i, p in enumerate(problems) if p is False]
    if len(todo) <= SELF_CHECK_IN_PROCESS:
        for i in todo:
            problems[i] = check_reference(references[i])
        return problems  # type: ignore[return-value]
    n = workers or max(1, min(8, (os.cpu_count() or 2)))
    with VerifierPool("boxed", workers=n, timeout_s=timeout_s) as pool:
        results = pool.verify([_self_check_item(references[i]) for i in todo])
    for i, r in zip(todo, results):
        problems[i] = _problem(r)
    return problems  # type: ignore[return-value]


_checker: BoxedVerifier | None = None


def _shared_checker() -> BoxedVerifier:
    global _checker
    if _checker is None:
        _checker = BoxedVerifier()
    return _checker


@hookimpl
def treerpo_register_verifiers(register):
    register("boxed", BoxedVerifier)
