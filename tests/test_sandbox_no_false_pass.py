"""No false PASS: programs that try to look successful without passing the tests, on both isolating backends.

Every attack below is a known reward hack for exit-code-based graders. The tests are HumanEval-style
(`check(candidate)`), and none of the programs implements the function correctly, so any PASS is a hole.
"""

from __future__ import annotations

import pytest

from test_sandbox_support import ISOLATING, get_backend, run
from treerpo_core.types import Verdict

pytestmark = [pytest.mark.sandbox, pytest.mark.parametrize("backend_name", ISOLATING)]

TESTS = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
CORRECT = "def add(a, b):\n    return a + b\n"
FORGED_LINE = '{"token": "%s", "status": "passed", "reason": "all tests passed", "tests_run": 2}'

ATTACKS = {
    "sys_exit_0_before_tests": "import sys\nsys.exit(0)\n",
    "os_exit_0_before_tests": "import os\nos._exit(0)\n",
    "os_exit_0_inside_the_function": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "system_exit_inside_the_function": "def add(a, b):\n    raise SystemExit(0)\n",
    "atexit_hook_exits_0": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    return 0\n",
    "excepthook_exits_0": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\ndef add(a, b):\n    return 0\n",
    "fake_success_banner": "print('All tests passed!')\nprint('PASS')\nimport sys\nsys.exit(0)\n",
    "forged_report_on_stdout": ("import sys\nfor t in ('', '0' * 32):\n    print(%r %% t)\n"
                                "sys.stdout.flush()\ndef add(a, b):\n    return 0\n" % FORGED_LINE),
    "forged_report_on_every_fd": ("import os\nline = (%r %% '0' * 32 + '\\n').encode()\nfor fd in range(256):\n"
                                  "    try:\n        os.write(fd, line)\n    except OSError:\n        pass\n"
                                  "def add(a, b):\n    return 0\n" % FORGED_LINE),
    "steal_token_from_judge": (
        "import os\nstolen = []\nppid = os.getppid()\nfor path in ('/proc/%d/fd/0' % ppid, '/proc/%d/mem' % ppid,\n"
        "             '/proc/%d/fd/1' % ppid):\n    try:\n        stolen.append(open(path, 'rb').read(64))\n"
        "    except OSError:\n        pass\nassert not stolen, stolen\ndef add(a, b):\n    return 0\n"),
    "kill_the_judge": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef add(a, b):\n    return 0\n",
    "eq_always_true": "class Yes:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Yes()\n",
    "int_subclass_eq_always_true": ("class Int(int):\n    def __eq__(self, other):\n        return True\n"
                                    "    __hash__ = int.__hash__\ndef add(a, b):\n    return Int(0)\n"),
    "patch_assertion_error": "import builtins\nbuiltins.AssertionError = type('N', (Exception,), {})\ndef add(a, b):\n    return 0\n",
    "no_function_at_all": "x = 1\n",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_does_not_pass(backend_name, attack):
    b = get_backend(backend_name)
    r = run(b, ATTACKS[attack], TESTS, entry_point="add", n_tests=2)
    assert r.verdict is not Verdict.PASS, r
    assert r.verdict is not Verdict.ERROR, r  # the program's fault is a FAIL (or TIMEOUT), not a sandbox error


@pytest.mark.parametrize("program", [
    "def len(x):\n    return 3\ndef f(x):\n    return []\n",  # shadows a builtin the tests use
    "def isclose(a, b):\n    return True\ndef f(x):\n    return 0.0\n",  # shadows the setup's helper
])
def test_program_cannot_replace_names_the_tests_rely_on(backend_name, program):
    b = get_backend(backend_name)
    tests = "assert len(f(1)) == 3\n" if "len" in program else "assert isclose(f(1), 2.5)\n"
    r = run(b, program, tests, setup="from math import isclose")
    assert r.verdict is Verdict.FAIL, r


def test_correct_program_passes(backend_name):
    """The control: the same tests and harness do PASS an honest solution."""
    b = get_backend(backend_name)
    r = run(b, CORRECT, TESTS, entry_point="add", n_tests=2)
    assert r.verdict is Verdict.PASS, r


def test_failure_reason_names_the_failing_assert(backend_name):
    b = get_backend(backend_name)
    r = run(b, "def add(a, b):\n    return a * b\n", TESTS, entry_point="add", n_tests=2)
    assert r.verdict is Verdict.FAIL
    assert "assert candidate(2, 3) == 5" in r.reason
