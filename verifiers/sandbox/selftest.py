"""`treerpo sandbox check`: a short containment self-test, one probe per guarantee, on this machine.

Each probe is a program whose `probe()` returns 'ok' only when the guarantee held (or, for the no-false-PASS
probes, a program that must not PASS). The full adversarial suite is tests/test_sandbox_*.py; this is the
quick look a user takes before trusting a new machine.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

from treerpo_core.types import Verdict

from .base import Backend, Job

OK_TEST = "assert probe() == 'ok', probe()"


@dataclass
class Probe:
    guarantee: str
    program: str
    expect: tuple[Verdict, ...] = (Verdict.PASS,)
    tests: str = OK_TEST


def probes(port: int) -> list[Probe]:
    home = os.path.expanduser("~")
    return [
        Probe("wall-clock limit kills the program", "def probe():\n    while True:\n        pass\n", (Verdict.TIMEOUT,)),
        Probe("no network (host loopback refused)",
              f"import socket\ndef probe():\n    try:\n        socket.create_connection(('127.0.0.1', {port}), 1)\n"
              "        return 'connected'\n    except OSError:\n        return 'ok'\n"),
        Probe("no view of host files (/root, home, cwd)",
              f"import os\ndef probe():\n    seen = [p for p in ('/root', {home!r}, {os.getcwd()!r}) if os.path.isdir(p) "
              "and os.listdir(p)]\n    return 'ok' if not seen else seen\n"),
        Probe("environment scrubbed",
              "import os\ndef probe():\n    return 'ok' if 'TREERPO_SELFTEST_SECRET' not in os.environ else 'leaked'\n"),
        Probe("memory cap", "def probe():\n    try:\n        b = bytearray(4 << 30)\n        return 'allocated'\n"
                            "    except MemoryError:\n        return 'ok'\n"),
        Probe("process cap (fork bomb contained)",
              "import os, time\ndef probe():\n    n = 0\n    try:\n        for _ in range(300):\n"
              "            if os.fork() == 0:\n                time.sleep(3)\n                os._exit(0)\n"
              "            n += 1\n    except OSError:\n        return 'ok'\n    return n\n"),
        Probe("output cap", "def probe():\n    while True:\n        print('x' * 10000)\n", (Verdict.FAIL,)),
        Probe("file-size cap", "def probe():\n    try:\n        open('/tmp/big', 'wb').write(b'x' * (200 << 20))\n"
                               "        return 'wrote'\n    except OSError:\n        return 'ok'\n"),
        Probe("read-only system dirs", "def probe():\n    try:\n        open('/usr/owned', 'w')\n        return 'wrote'\n"
                                       "    except OSError:\n        return 'ok'\n"),
        Probe("no false PASS: sys.exit(0) before the tests", "import sys\nsys.exit(0)\n", (Verdict.FAIL,)),
        Probe("no false PASS: os._exit(0) inside the function",
              "import os\ndef probe():\n    os._exit(0)\n", (Verdict.FAIL,)),
        Probe("no false PASS: fake success banner", "print('all tests passed')\ndef probe():\n    return 'no'\n",
              (Verdict.FAIL,)),
    ]


def run_selftest(backend: Backend) -> list[tuple[str, bool, str]]:
    """(guarantee, held, verdict and reason) for each probe."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    os.environ["TREERPO_SELFTEST_SECRET"] = "if you can read this, the environment leaked"
    stop = threading.Event()
    connected = []

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connected.append(server.accept())
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    out = []
    try:
        for p in probes(server.getsockname()[1]):
            t0 = time.monotonic()
            result, _ = backend.run(Job(program=p.program, tests=p.tests))
            held = result.verdict in p.expect
            out.append((p.guarantee, held, f"{result.verdict.value} in {time.monotonic() - t0:.2f}s: {result.reason[:100]}"))
    finally:
        stop.set()
        t.join()
        server.close()
        os.environ.pop("TREERPO_SELFTEST_SECRET", None)
    if connected:
        out.append(("no network (host loopback refused)", False, "the server accepted a connection"))
    return out
