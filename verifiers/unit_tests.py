"""`unit-tests` verifier: run model-written Python against a task's unit tests, in a sandbox.

Inputs (contract of issue 4):
- `completion`: code, or prose with fenced code blocks; the last complete ```python (or bare ```) block is taken;
- `reference`: test code, either plain asserts (MBPP) or HumanEval's `def check(candidate)`;
- metadata `entry_point` (HumanEval: `check(<entry_point>)` is called), `prompt` (HumanEval: prepended to the
  completion, so body-only and whole-function completions both work), `setup` (MBPP's test_setup_code /
  test_imports, run before the program and before the tests).

Verdicts: PASS only when the sandbox's judge reports, with this run's token, that every test ran and passed
(see treerpo_verifiers.sandbox.harness for why the program cannot forge that); FAIL with the reason (assertion,
exception, syntax error, exit before the tests); TIMEOUT; ERROR when the sandbox itself failed.

What the sandboxes do and do not protect is listed in `treerpo_verifiers.sandbox` (package docstring); the
judge/candidate design that makes PASS unforgeable is explained in `treerpo_verifiers.sandbox.harness`.
"""

from __future__ import annotations

import ast
import atexit
import os
import re
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from treerpo_core.plugins import hookimpl
from treerpo_core.types import Verdict, VerifyResult

from .sandbox import Job, Limits, make_backend

FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*(?:python3?|py)?[ \t]*\n", re.M)
CODE_LANGS = ("", "python", "python3", "py")


# CPython 3.11's ast.parse is not safe to call from several threads at once ("AST constructor recursion
# depth mismatch"); verify_batch assembles jobs in its worker threads.
_ast_lock = threading.Lock()


def parse(code: str) -> ast.Module:
    with _ast_lock:
        return ast.parse(code)


def extract_code(completion: str) -> str:
    """The last complete fenced Python block; else the text after an unclosed opening fence (the model ran out
    of tokens inside the block); else the whole completion, taken as code."""
    blocks = [m.group(2) for m in FENCE.finditer(completion) if m.group(1).lower() in CODE_LANGS]
    if blocks:
        return blocks[-1]
    opened = list(OPEN_FENCE.finditer(completion))
    if opened:
        return completion[opened[-1].end():]
    return completion


def defines_function(code: str, name: str) -> bool:
    """Whether `code` defines `name` at top level (falls back to a regex when the code does not parse)."""
    try:
        tree = parse(code)
    except SyntaxError:
        return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


def assemble_program(code: str, *, entry_point: str | None, prompt: str | None) -> str:
    """HumanEval: the prompt (signature, docstring, helpers such as `poly`) then the completion. A body-only
    completion continues the prompt's `def`; a whole function follows the prompt's stub and replaces it, still
    seeing the prompt's imports and helpers."""
    if not prompt or not entry_point:
        return code
    if defines_function(code, entry_point):
        return prompt + "\n\n" + code  # the stub's docstring is a complete body
    return prompt + code


def count_asserts(tests: str) -> int:
    try:
        return max(1, sum(isinstance(n, ast.Assert) for n in ast.walk(parse(tests))))
    except SyntaxError:
        return 1


_open_verifiers: "weakref.WeakSet[UnitTestsVerifier]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # containers must not outlive the process, however it exits normally
    for v in list(_open_verifiers):
        v.close()


class UnitTestsVerifier:
    """Grades Python completions by running unit tests in `sandbox` (bwrap | docker | local)."""

    def __init__(self, *, sandbox: str = "bwrap", timeout_s: float = 5.0, concurrency: int | None = None,
                 memory_mb: int = 512, max_procs: int = 32, output_kb: int = 1024, tmp_mb: int = 64,
                 image: str | None = None, python: str | None = None, site_packages: bool = False):
        self.limits = Limits(timeout_s=float(timeout_s), memory_mb=int(memory_mb), max_procs=int(max_procs),
                             output_bytes=int(output_kb) << 10, tmp_mb=int(tmp_mb))
        self.concurrency = int(concurrency or max(2, os.cpu_count() or 2))
        # site_packages: let the program import the sandbox interpreter's installed packages (slower start)
        options: dict[str, Any] = {"site_packages": bool(site_packages)} if sandbox != "local" else {}
        if python:
            options["python"] = python
        if sandbox == "docker":
            options["pool_size"] = self.concurrency
            if image:
                options["image"] = image
        self.sandbox = sandbox
        self.backend = make_backend(sandbox, self.limits, **options)
        self._executor: ThreadPoolExecutor | None = None
        _open_verifiers.add(self)

    def job(self, completion: str, reference: str, metadata: dict) -> Job:
        entry_point = metadata.get("entry_point") or None
        prompt = metadata.get("prompt") or None
        code = extract_code(completion)
        return Job(program=assemble_program(code, entry_point=entry_point, prompt=prompt), tests=str(reference),
                   setup=str(metadata.get("setup") or ""), prompt=prompt if entry_point else None,
                   entry_point=entry_point, n_tests=count_asserts(str(reference)))

    def verify(self, completion: str, reference: Any, **metadata) -> VerifyResult:
        if not isinstance(reference, str) or not reference.strip():
            return VerifyResult(Verdict.ERROR, f"unit-tests needs test code as the reference, got {reference!r:.80}")
        return self.backend.run(self.job(completion, reference, metadata))[0]

    def verify_batch(self, items: list[dict]) -> list[VerifyResult]:
        """Checks in parallel, at most `concurrency` sandboxes at once, results in input order."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="unit-tests")

        def one(item: dict) -> VerifyResult:
            meta = {k: v for k, v in item.items() if k not in ("completion", "reference")}
            try:
                return self.verify(item["completion"], item["reference"], **meta)
            except Exception as exc:
                return VerifyResult(Verdict.ERROR, f"unit-tests: {type(exc).__name__}: {exc}")

        return list(self._executor.map(one, items))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.backend.close()
        _open_verifiers.discard(self)

    def __enter__(self) -> "UnitTestsVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@hookimpl
def treerpo_register_verifiers(register):
    register("unit-tests", UnitTestsVerifier)
