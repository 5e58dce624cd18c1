"""`local` backend: the harness runs as a plain child process with rlimits, and NO isolation.

For machines where neither bubblewrap nor docker can run. The judge/candidate split still stops the
exit-0 and fake-banner tricks, and the rlimits still cap memory, processes, output, file size and CPU, but
the program can read your files and environment, use the network and signal your processes. The CLI only
allows it with --unsafe (treerpo_core.verify_pool.check_sandbox_allowed); constructing it warns loudly.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

from .base import HARNESS_SOURCE, Backend, Limits, RawRun, communicate


class LocalBackend(Backend):
    name = "local"
    isolated = False

    def __init__(self, limits: Limits | None = None, *, python: str | None = None):
        super().__init__(limits)
        self.python = python or sys.executable
        print("treerpo: WARNING: unit-tests with verifier.sandbox=local runs model-written code WITHOUT isolation "
              "(your files, network and processes are exposed)", file=sys.stderr)

    def _run(self, data: bytes) -> RawRun:
        with tempfile.TemporaryDirectory(prefix="treerpo-local-") as tmp:
            env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"}  # scrubbed
            proc = subprocess.Popen([self.python, "-I", "-c", HARNESS_SOURCE], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp,
                                    start_new_session=True, close_fds=True)
            return communicate(proc, data, self.limits.timeout_s)
