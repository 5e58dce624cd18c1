"""The `unit-tests` verifier: code extraction, HumanEval/MBPP program assembly, verdicts on both backends,
batching, missing-backend errors, --unsafe for `local`, and no container left behind by `treerpo verify`."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_sandbox_support import ISOLATING, get_backend
from treerpo_cli.main import cli
from treerpo_core.plugins import create_task, get_registry
from treerpo_core.types import Verdict
from treerpo_core.verify_pool import VerifierPool
from treerpo_verifiers.sandbox import SandboxUnavailable
from treerpo_verifiers.unit_tests import UnitTestsVerifier, assemble_program, extract_code

FIXTURES = Path(__file__).parent / "fixtures"
HE_SAMPLE = range(0, 164, 11)  # 15 problems spread over the set; the full sweep is benchmarks/humaneval_sweep.py


def verifier_on(name: str, **kw) -> UnitTestsVerifier:
    get_backend(name)  # skips (or, under CI=true, fails) when the backend is unavailable
    v = UnitTestsVerifier(sandbox=name, timeout_s=kw.pop("timeout_s", 3.0), concurrency=kw.pop("concurrency", 2), **kw)
    if name == "docker":
        v.backend.warm()
    return v


@pytest.fixture(scope="module", params=ISOLATING)
def verifier(request):
    v = verifier_on(request.param)
    yield v
    v.close()


def broken(solution: str) -> str:
    """A wrong version of a canonical solution: whatever it computed, it now returns None."""
    return "    return None\n" + solution


# -- pure parts ------------------------------------------------------------------------------------------
def test_extract_code_takes_the_last_complete_python_block():
    text = "First try:\n```python\nx = 1\n```\nBetter:\n```python\nx = 2\n```\nDone. ```"
    assert extract_code(text) == "x = 2\n"


def test_extract_code_ignores_other_languages_and_reads_unclosed_blocks():
    assert extract_code("```bash\nrm -rf /\n```\n```py\nok = 1\n```") == "ok = 1\n"
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1\n"  # no fence: the text is code


def test_assemble_body_only_and_whole_function():
    prompt = "def inc(x):\n    \"\"\"Add one.\"\"\"\n"
    assert assemble_program("    return x + 1\n", entry_point="inc", prompt=prompt) == prompt + "    return x + 1\n"
    whole = assemble_program("def inc(x):\n    return x + 1\n", entry_point="inc", prompt=prompt)
    assert whole.startswith(prompt) and whole.endswith("def inc(x):\n    return x + 1\n")
    assert assemble_program("x = 1\n", entry_point=None, prompt=None) == "x = 1\n"


def test_factory_names_the_core_keywords():
    params = inspect.signature(get_registry().get("verifier", "unit-tests").factory).parameters
    assert "sandbox" in params and "timeout_s" in params


# -- verdicts on both backends ---------------------------------------------------------------------------
@pytest.mark.sandbox
def test_humaneval_sample_canonical_pass_and_broken_fail(verifier):
    examples = list(create_task("humaneval").examples("test"))
    sample = [examples[i] for i in HE_SAMPLE]
    items = []
    for ex in sample:
        body = ex.target[len("```python\n") + len(ex.metadata["prompt"]):].rsplit("```", 1)[0]
        for completion in (body, broken(body)):
            items.append({"completion": completion, "reference": ex.reference, **ex.metadata})
    results = verifier.verify_batch(items)
    verdicts = [r.verdict for r in results]
    assert verdicts == [Verdict.PASS, Verdict.FAIL] * len(sample), [(ex.id, r) for ex, r in zip(
        [e for e in sample for _ in (0, 1)], results) if r.verdict not in (Verdict.PASS, Verdict.FAIL)]


@pytest.mark.sandbox
def test_humaneval_whole_function_in_prose_passes(verifier):
    ex = list(create_task("humaneval").examples("test"))[2]  # truncate_number
    completion = ("Sure, here it is:\n```python\ndef truncate_number(number: float) -> float:\n"
                  "    return number % 1.0\n```\nThis keeps the decimal part.")
    assert verifier.verify(completion, ex.reference, **ex.metadata).verdict is Verdict.PASS


@pytest.mark.sandbox
def test_mbpp_with_setup_code(verifier):
    examples = list(create_task("mbpp", {"data_file": str(FIXTURES / "mbpp_sample.jsonl")}).examples("test"))
    results = verifier.verify_batch([{"completion": ex.target, "reference": ex.reference, **ex.metadata}
                                     for ex in examples])
    assert [r.verdict for r in results] == [Verdict.PASS] * 3, results
    area = examples[2]
    wrong = verifier.verify("```python\ndef circle_area(r):\n    return 3 * r * r\n```", area.reference, **area.metadata)
    assert wrong.verdict is Verdict.FAIL and "circle_area" in wrong.reason


@pytest.mark.sandbox
def test_fail_reasons(verifier):
    tests = "assert f(2) == 4\n"
    assert "SyntaxError" in verifier.verify("def f(x) return x\n", tests).reason
    r = verifier.verify("def f(x):\n    raise ValueError('nope')\n", tests)
    assert r.verdict is Verdict.FAIL and "ValueError: nope" in r.reason


@pytest.mark.sandbox
def test_timeout_verdict(verifier):
    r = verifier.verify("def f(x):\n    while True:\n        pass\n", "assert f(1) == 1\n")
    assert r.verdict is Verdict.TIMEOUT


@pytest.mark.sandbox
def test_verify_batch_runs_in_parallel_and_keeps_order(verifier):
    items = [{"completion": f"import time\ndef f():\n    time.sleep(1.0)\n    return {i}\n",
              "reference": f"assert f() == {i if i != 2 else -1}\n"} for i in range(4)]
    t0 = time.monotonic()
    results = verifier.verify_batch(items)
    elapsed = time.monotonic() - t0
    assert [r.verdict for r in results] == [Verdict.PASS, Verdict.PASS, Verdict.FAIL, Verdict.PASS]
    assert elapsed < 5.0, f"4 one-second checks, 2 at a time, took {elapsed:.1f}s (one at a time: over 4 s + start-up)"


@pytest.mark.sandbox
def test_sandbox_failure_is_error_not_fail():
    v = verifier_on("bwrap")
    try:
        v.backend.python = "/nonexistent/python3"  # the sandbox cannot start: not the program's fault
        (r,) = v.verify_batch([{"completion": "x = 1", "reference": "assert x == 1\n"}])
    finally:
        v.close()
    assert r.verdict is Verdict.ERROR and "python3" in r.reason


@pytest.mark.sandbox
def test_verifier_pool_uses_verify_batch():
    get_backend("bwrap")
    with VerifierPool("unit-tests", workers=2, timeout_s=5, sandbox="bwrap") as pool:
        results = pool.verify([{"completion": "def f():\n    return 1\n", "reference": "assert f() == 1\n"},
                               {"completion": "def f():\n    return 2\n", "reference": "assert f() == 1\n"}])
    assert [r.verdict for r in results] == [Verdict.PASS, Verdict.FAIL]


# -- missing backends, --unsafe -----------------------------------------------------------------------------
def test_missing_bwrap_interpreter_is_a_clear_error():
    with pytest.raises(SandboxUnavailable, match="install python3"):
        UnitTestsVerifier(sandbox="bwrap", python="/nonexistent/python3")


def test_unknown_sandbox_is_a_clear_error():
    with pytest.raises(SandboxUnavailable, match="bwrap, docker, local"):
        UnitTestsVerifier(sandbox="firejail")


@pytest.mark.sandbox
def test_missing_docker_image_says_how_to_build():
    get_backend("docker")
    with pytest.raises(SandboxUnavailable, match="not present"):
        UnitTestsVerifier(sandbox="docker", image="treerpo-no-such-image:0")


def test_local_sandbox_is_refused_without_unsafe():
    r = CliRunner().invoke(cli, ["verify", "--verifier", "unit-tests", "--reference", "assert f() == 1",
                                 "--set", "verifier.sandbox=local", "def f():\n    return 1\n"])
    assert r.exit_code == 2 and "--unsafe" in r.output


def test_local_sandbox_with_unsafe_warns_and_runs():
    r = CliRunner().invoke(cli, ["verify", "--verifier", "unit-tests", "--unsafe", "--reference", "assert f() == 1",
                                 "--set", "verifier.sandbox=local", "def f():\n    return 1\n"])
    assert r.exit_code == 0, r.output
    assert "WITHOUT isolation" in r.output  # stderr, mixed into the runner's output
    assert '"verdict": "PASS"' in r.output


@pytest.mark.sandbox
def test_treerpo_verify_leaves_no_container_behind(tmp_path):
    get_backend("docker")
    import docker

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"completion": f"def f():\n    return {i}\n", "reference": "assert f() == 1\n"}) + "\n"
                             for i in range(3)))
    proc = subprocess.Popen([sys.executable, "-m", "treerpo_cli.main", "verify", "--verifier", "unit-tests",
                             "--input", str(items), "--set", "verifier.sandbox=docker"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert [json.loads(line)["verdict"] for line in out.splitlines()] == ["FAIL", "PASS", "FAIL"]
    left = docker.from_env().containers.list(all=True, filters={"label": "treerpo.sandbox.owner"})
    assert [c.name for c in left if c.labels["treerpo.sandbox.owner"].endswith(f":{proc.pid}")] == []


@pytest.mark.sandbox
def test_program_objects_cross_as_handles(verifier):
    """MBPP has tests that build the program's own class and pass instances back (task 601's Pair)."""
    program = ("class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
               "def longest_chain(pairs):\n    pairs = sorted(pairs, key=lambda p: p.b)\n    n, end = 0, None\n"
               "    for p in pairs:\n        if end is None or p.a > end:\n            n, end = n + 1, p.b\n    return n\n")
    tests = "assert longest_chain([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)]) == 3\n"
    assert verifier.verify(program, tests).verdict is Verdict.PASS
    # a handle equals only itself: a program object never satisfies `== expected`
    r = verifier.verify(program + "def make():\n    return Pair(1, 2)\n", "assert make() == make()\n")
    assert r.verdict is Verdict.FAIL
