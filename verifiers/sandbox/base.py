"""What every sandbox backend shares: the limits, the job sent to the in-sandbox harness, and how the
harness's report becomes a verdict.

A backend only has to start `python3 -I -c <harness source>` in isolation, feed it the request and token on
stdin and return what came out (`RawRun`). Judging is common, so the no-false-PASS rule is written once:
PASS needs a report on the harness's own stdout that carries this run's random token and says every test
ran and passed (see harness.py for why the program cannot forge one).
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from treerpo_core.plugins import PluginError
from treerpo_core.types import Verdict, VerifyResult

HARNESS_SOURCE = (Path(__file__).with_name("harness.py")).read_text()
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


class SandboxUnavailable(PluginError):
    """The backend cannot run here (binary missing, engine down, image not built); the message says how to fix it.
    A PluginError, so the CLI prints it as a one-line usage error rather than a traceback."""


@dataclass
class Limits:
    """Per-run limits. Wall-clock is enforced by the host (the whole sandbox is killed); the rest by the kernel
    (rlimits on the program's process tree, tmpfs sizes, and for docker the container's cgroup)."""

    timeout_s: float = 5.0  # wall-clock for the whole run; past it: TIMEOUT and every process killed
    memory_mb: int = 512  # address space of each program process (RLIMIT_AS)
    max_procs: int = 32  # processes/threads of the sandbox user (RLIMIT_NPROC; docker: pids cgroup too)
    output_bytes: int = 1 << 20  # stdout+stderr the program may print before it is killed
    file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    tmp_mb: int = 64  # size of each scratch tmpfs (/tmp, /var/tmp, /dev/shm)
    open_files: int = 64  # RLIMIT_NOFILE
    cpu_s: int | None = None  # RLIMIT_CPU; None: the wall-clock limit rounded up, plus one

    def for_harness(self) -> dict:
        return {"memory_bytes": self.memory_mb << 20, "max_procs": self.max_procs, "output_bytes": self.output_bytes,
                "file_bytes": self.file_mb << 20, "open_files": self.open_files,
                "cpu_s": self.cpu_s if self.cpu_s is not None else int(self.timeout_s) + 1}


@dataclass
class Job:
    """One check: the program (already assembled by the verifier) and the trusted test code around it."""

    program: str
    tests: str
    setup: str = ""
    prompt: str | None = None  # HumanEval: run in the judge for trusted helpers
    entry_point: str | None = None  # HumanEval: tests define check(candidate)
    n_tests: int = 1


@dataclass
class RawRun:
    stdout: bytes
    stderr: bytes
    exit_code: int | None
    timed_out: bool
    info: dict = field(default_factory=dict)  # backend notes, e.g. {"container": id}


def request_bytes(job: Job, limits: Limits, *, reap_all: bool) -> bytes:
    body = json.dumps({"program": job.program, "tests": job.tests, "setup": job.setup, "prompt": job.prompt,
                       "entry_point": job.entry_point, "n_tests": job.n_tests, "limits": limits.for_harness(),
                       "reap_all": reap_all, "wipe": list(SCRATCH_DIRS) if reap_all else []}).encode()
    return str(len(body)).encode() + b"\n" + body


def judge_report(raw: RawRun, token: str, limits: Limits, backend: str) -> tuple[VerifyResult, dict]:
    """The verdict from a run's output. Only the harness's token-bearing report can say PASS."""
    if raw.timed_out:
        return VerifyResult(Verdict.TIMEOUT, f"ran past {limits.timeout_s:g}s wall-clock; every process was killed"), {}
    report = None
    for line in raw.stdout.splitlines()[::-1]:
        try:
            candidate = json.loads(line)
        except ValueError:
            continue
        if isinstance(candidate, dict) and candidate.get("token") == token:
            report = candidate
            break
    if report is None:
        err = raw.stderr.decode("utf-8", "replace").strip()[-500:]
        code = raw.exit_code
        if code is not None and (code < 0 or code >= 128) and not err:
            # The judge died by a signal with nothing on stderr: inside the sandbox only the program shares its
            # uid, so the program killed it. That is the program's failure; calling it ERROR would let a policy
            # have its bad samples dropped (loss.on_error=drop) by killing the judge.
            sig = -code if code < 0 else code - 128
            return VerifyResult(Verdict.FAIL, f"the judge process was killed by signal {sig} from inside the "
                                              f"sandbox before it reported"), {}
        return VerifyResult(Verdict.ERROR, f"{backend} sandbox gave no report (exit code {raw.exit_code}); "
                                           f"stderr: {err or '(empty)'}"), {}
    status, reason = report.get("status"), str(report.get("reason", ""))
    output = str(report.get("output", "")).strip()
    if status == "passed":
        return VerifyResult(Verdict.PASS, reason), report
    if status == "timeout":
        return VerifyResult(Verdict.TIMEOUT, reason), report
    if status == "failed":
        tail = f"; program output: {output[-300:]}" if output else ""
        return VerifyResult(Verdict.FAIL, reason + tail), report
    return VerifyResult(Verdict.ERROR, reason or f"harness status {status!r}"), report


def new_token() -> str:
    return secrets.token_hex(16)


def communicate(proc: subprocess.Popen, data: bytes, timeout_s: float, cap: int = 4 << 20) -> RawRun:
    """Write `data`, read stdout/stderr (at most `cap` bytes each) until EOF or the deadline; on the deadline kill
    the process group. Never blocks past `timeout_s` (+ the kill)."""
    deadline = time.monotonic() + timeout_s
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    out = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for f in out:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    timed_out = False
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(left):
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                sel.unregister(key.fileobj)
            elif len(out[key.fileobj]) < cap:
                out[key.fileobj] += chunk
    sel.close()
    if timed_out:
        kill_group(proc)
    try:
        code = proc.wait(timeout=max(0.1, deadline - time.monotonic()) if not timed_out else 5)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        code = proc.wait(5)
        timed_out = True
    for f in out:
        f.close()
    return RawRun(bytes(out[proc.stdout]), bytes(out[proc.stderr]), code, timed_out)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.kill()
    except OSError:
        pass


class Backend:
    """A way to run the harness in isolation. Subclasses implement `_run(data)`."""

    name = "?"
    isolated = True

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()

    def check_available(self) -> None:
        """Raise SandboxUnavailable with install instructions when this backend cannot run here."""

    def run(self, job: Job) -> tuple[VerifyResult, dict]:
        token = new_token()
        try:
            data = request_bytes(job, self.limits, reap_all=self.reaps) + token.encode() + b"\n"
            raw = self._run(data)
        except SandboxUnavailable:
            raise
        except Exception as exc:  # a sandbox failure is never a FAIL
            return VerifyResult(Verdict.ERROR, f"{self.name} sandbox failed: {type(exc).__name__}: {exc}"), {}
        result, report = judge_report(raw, token, self.limits, self.name)
        self._after(raw, result, report)
        return result, report

    reaps = False  # whether the harness must kill leftovers and wipe scratch dirs itself (shared containers)

    def _run(self, data: bytes) -> RawRun:
        """Start the harness in isolation, feed it `data` on stdin, collect its output within the wall-clock."""
        raise NotImplementedError

    def _after(self, raw: RawRun, result: VerifyResult, report: dict) -> None:
        """Hook for pooled backends: retire a container after a violation."""

    def close(self) -> None:
        pass
