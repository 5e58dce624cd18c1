"""Adversarial suite: every containment guarantee of the sandbox, attacked on both isolating backends.

Each test is a program that tries to break one guarantee; the test asserts the attack failed *and* that the
verdict is not PASS where the attack was a grab for reward.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import treerpo_verifiers
from test_sandbox_support import ISOLATING, TIMEOUT_S, get_backend, marker, run, wait_gone
from treerpo_core.types import Verdict

pytestmark = [pytest.mark.sandbox, pytest.mark.parametrize("backend_name", ISOLATING)]


def spawn_lingerer(mark: str, *, ignore_term: bool, double_fork: bool) -> str:
    """Program text that starts a process carrying `mark` in its argv and meant to outlive the run."""
    child = ("import os,signal,time\n"
             + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
             + ("if os.fork(): os._exit(0)\nos.setsid()\n" if double_fork else "")
             + "time.sleep(120)\n")
    return f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}, {mark!r}])\n"


# -- time and the process tree ----------------------------------------------------------------------------
def test_wall_clock_kills_busy_loop(backend_name):
    b = get_backend(backend_name)
    t0 = time.monotonic()
    r = run(b, "def probe():\n    while True:\n        pass\n")
    assert r.verdict is Verdict.TIMEOUT, r
    assert time.monotonic() - t0 < TIMEOUT_S + 3


def test_whole_tree_killed_even_when_sigterm_ignored(backend_name):
    b = get_backend(backend_name)
    mark = marker()
    prog = spawn_lingerer(mark, ignore_term=True, double_fork=False)
    r = run(b, prog + "signal_ignored = __import__('signal').signal(15, __import__('signal').SIG_IGN)\n"
                      "def probe():\n    while True:\n        pass\n")
    assert r.verdict is Verdict.TIMEOUT, r
    assert wait_gone(mark) == []


def test_double_forked_daemon_does_not_outlive_a_passing_run(backend_name):
    b = get_backend(backend_name)
    mark = marker()
    prog = spawn_lingerer(mark, ignore_term=True, double_fork=True) + "def probe():\n    return 'ok'\n"
    r = run(b, prog)
    assert r.verdict is Verdict.PASS, r
    assert wait_gone(mark) == []


def test_cpu_limit(backend_name):
    b = get_backend(backend_name, timeout_s=10.0, cpu_s=1)  # generous wall-clock: CPU seconds come slowly on a loaded machine
    r = run(b, "def probe():\n    x = 0\n    while True:\n        x += 1\n")
    assert r.verdict is Verdict.TIMEOUT, r
    assert "CPU" in r.reason


# -- resource caps -----------------------------------------------------------------------------------------
def test_memory_cap(backend_name):
    b = get_backend(backend_name)
    prog = ("def probe():\n    try:\n        blob = bytearray(2 << 30)\n        return 'allocated %d' % len(blob)\n"
            "    except MemoryError:\n        return 'ok'\n")
    assert run(b, prog).verdict is Verdict.PASS


def test_fork_bomb_is_contained(backend_name):
    b = get_backend(backend_name)
    mark = marker()
    bomb = f"import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n#{mark}"
    prog = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {bomb!r}, {mark!r}])\n" \
           "def probe():\n    import time\n    time.sleep(30)\n"
    t0 = time.monotonic()
    r = run(b, prog)
    assert r.verdict in (Verdict.TIMEOUT, Verdict.FAIL), r
    assert time.monotonic() - t0 < TIMEOUT_S + 5
    assert wait_gone(mark, 5.0) == []
    # and the sandbox still works afterwards (docker: the container was replaced or reaped)
    assert run(b, "def probe():\n    return 'ok'\n").verdict is Verdict.PASS


def test_process_cap_refuses_more_than_the_limit(backend_name):
    b = get_backend(backend_name)
    prog = ("import os, time\n"
            "def probe():\n    n = 0\n    try:\n        for _ in range(500):\n"
            "            if os.fork() == 0:\n                time.sleep(5)\n                os._exit(0)\n"
            "            n += 1\n    except OSError:\n        pass\n    return 'ok' if n < 64 else n\n")
    assert run(b, prog).verdict is Verdict.PASS


def test_runaway_output_is_cut_off(backend_name):
    b = get_backend(backend_name)
    t0 = time.monotonic()
    r = run(b, "def probe():\n    while True:\n        print('x' * 10000)\n")
    assert r.verdict is Verdict.FAIL, r
    assert "output limit" in r.reason
    assert time.monotonic() - t0 < TIMEOUT_S  # killed at the cap, not at the deadline


def test_file_size_cap(backend_name):
    b = get_backend(backend_name)
    prog = ("import errno\ndef probe():\n    try:\n        with open('/tmp/big', 'wb') as f:\n"
            "            f.write(b'x' * (40 << 20))\n        return 'wrote 40 MB'\n"
            "    except OSError as e:\n        return 'ok' if e.errno == errno.EFBIG else repr(e)\n")
    assert run(b, prog).verdict is Verdict.PASS


@pytest.mark.parametrize("scratch", ["/tmp", "/var/tmp", "/dev/shm"])
def test_tmp_space_cap(backend_name, scratch):
    b = get_backend(backend_name)
    prog = ("import errno\ndef probe():\n    try:\n        for i in range(40):\n"
            f"            with open('{scratch}/f%d' % i, 'wb') as f:\n                f.write(b'x' * (8 << 20))\n"
            "        return 'wrote 320 MB'\n"
            "    except OSError as e:\n        return 'ok' if e.errno == errno.ENOSPC else repr(e)\n")
    assert run(b, prog).verdict is Verdict.PASS


def test_open_file_cap(backend_name):
    b = get_backend(backend_name)
    prog = ("import errno\ndef probe():\n    held = []\n    try:\n        for i in range(5000):\n"
            "            held.append(open('/dev/null'))\n        return 'opened 5000'\n"
            "    except OSError as e:\n        return 'ok' if e.errno == errno.EMFILE else repr(e)\n")
    assert run(b, prog).verdict is Verdict.PASS


# -- isolation -------------------------------------------------------------------------------------------
def test_no_network_even_to_host_loopback(backend_name):
    b = get_backend(backend_name)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(0.2)

    def accept():
        end = time.monotonic() + TIMEOUT_S + 2
        while time.monotonic() < end:
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    t = threading.Thread(target=accept)
    t.start()
    prog = ("import socket\ndef probe():\n    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
            "        return 'connected'\n    except OSError:\n        return 'ok'\n")
    r = run(b, prog)
    t.join()
    server.close()
    assert r.verdict is Verdict.PASS, r
    assert accepted == []


def test_no_view_of_host_files(backend_name):
    b = get_backend(backend_name)
    secrets_on_host = ["/root", os.getcwd(), os.path.dirname(treerpo_verifiers.__file__), os.path.expanduser("~"),
                       "/etc/shadow", "/home", "/work", "/var/run/docker.sock", "/run/docker.sock"]
    prog = (f"import os\ndef probe():\n    seen = [p for p in {secrets_on_host!r} if os.path.exists(p) and os.listdir(p) "
            f"if os.path.isdir(p)] + [p for p in {secrets_on_host!r} if os.path.isfile(p)]\n"
            "    return 'ok' if not seen else seen\n")
    r = run(b, prog)
    assert r.verdict is Verdict.PASS, r


def test_system_dirs_are_read_only(backend_name):
    b = get_backend(backend_name)
    prog = ("def probe():\n    for p in ('/usr/bin/owned', '/usr/lib/owned', '/owned'):\n        try:\n"
            "            open(p, 'w').write('x')\n            return 'wrote ' + p\n        except OSError:\n"
            "            pass\n    return 'ok'\n")
    assert run(b, prog).verdict is Verdict.PASS


def test_environment_is_scrubbed(backend_name, monkeypatch):
    secret = "s3cret-" + marker()
    monkeypatch.setenv("TREERPO_TEST_SECRET", secret)
    b = get_backend(backend_name)
    prog = ("import os\ndef probe():\n    env = dict(os.environ)\n"
            f"    return 'ok' if not any({secret!r} in k + v for k, v in env.items()) else env\n")
    assert run(b, prog).verdict is Verdict.PASS


def test_nothing_written_survives_the_run(backend_name):
    b = get_backend(backend_name)
    mark = marker()
    write = (f"def probe():\n    for d in ('/tmp', '/var/tmp', '/dev/shm'):\n"
             f"        open(d + '/{mark}', 'w').write('x')\n    return 'ok'\n")
    look = (f"import os\ndef probe():\n    left = [d for d in ('/tmp', '/var/tmp', '/dev/shm') "
            f"if os.path.exists(d + '/{mark}')]\n    return 'ok' if not left else left\n")
    for _ in range(3):  # docker: enough runs to land on every container of a 2-container pool at least once
        assert run(b, write).verdict is Verdict.PASS
        assert run(b, look).verdict is Verdict.PASS


def test_killing_everything_from_inside_harms_nothing_outside(backend_name):
    b = get_backend(backend_name)
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        prog = ("import os, signal\nfor sig in (signal.SIGKILL, signal.SIGTERM):\n"
                "    for target in (-1, os.getppid(), 1):\n        try:\n            os.kill(target, sig)\n"
                "        except OSError:\n            pass\ndef probe():\n    return 'ok'\n")
        r = run(b, prog)
        # the judge dies too, and that is the program's doing: FAIL, never ERROR (which training may drop)
        assert r.verdict is Verdict.FAIL, r
        assert canary.poll() is None, "a process outside the sandbox was killed"
        assert run(b, "def probe():\n    return 'ok'\n").verdict is Verdict.PASS
    finally:
        canary.kill()
        canary.wait()


def test_judge_process_is_out_of_the_programs_reach(backend_name):
    """The judge holds the token and writes the report: the program may not read its memory or open its fds."""
    b = get_backend(backend_name)
    prog = ("import os\ndef probe():\n    judge = os.getppid()\n    got = []\n"
            "    for path in ('/proc/%d/mem' % judge, '/proc/%d/fd/0' % judge, '/proc/%d/fd/1' % judge):\n"
            "        try:\n            open(path, 'rb').close()\n            got.append(path)\n"
            "        except OSError:\n            pass\n    return 'ok' if not got else got\n")
    r = run(b, prog)
    assert r.verdict is Verdict.PASS, r


def test_parallel_runs_do_not_interfere(backend_name):
    b = get_backend(backend_name)

    def one(i: int):
        prog = (f"import time, os\nopen('/tmp/who', 'w').write('{i}')\n"
                f"def probe():\n    time.sleep(0.3)\n    mine = open('/tmp/who').read()\n"
                f"    return 'ok' if mine == '{i}' else mine\n")
        return run(b, prog)

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(one, range(6)))
    assert [r.verdict for r in results] == [Verdict.PASS] * 6, results
