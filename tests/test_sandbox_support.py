"""Shared fixtures for the sandbox suites: one backend per isolating sandbox, and host-side probes.

Every adversarial test runs on both `bwrap` and `docker`. A backend that cannot run here is skipped with the
reason (install bubblewrap / start dockerd / `treerpo sandbox build`); under CI=true the conftest hook turns
such a skip into a failure.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from treerpo_verifiers.sandbox import Job, Limits, SandboxUnavailable, make_backend

ISOLATING = ("bwrap", "docker")
TIMEOUT_S = 2.0

_backends: dict = {}


def get_backend(name: str, **limit_overrides):
    """A cached backend with short limits (the suite's budget is minutes, not hours)."""
    key = (name, tuple(sorted(limit_overrides.items())))
    if key not in _backends:
        limits = Limits(**{"timeout_s": TIMEOUT_S, **limit_overrides})
        options = {"pool_size": 2} if name == "docker" else {}
        try:
            _backends[key] = make_backend(name, limits, **options)
            if name == "docker":
                _backends[key].warm()  # container start-up is not part of any timed check
        except SandboxUnavailable as exc:
            _backends[key] = exc
    backend = _backends[key]
    if isinstance(backend, Exception):
        pytest.skip(f"sandbox {name} unavailable: {backend}")
    return backend


def run(backend, program: str, tests: str = "assert probe() == 'ok', probe()", **job):
    result, _ = backend.run(Job(program=program, tests=tests, **job))
    return result


def marker() -> str:
    return "treerpo-probe-" + uuid.uuid4().hex


def processes_with(mark: str) -> list[int]:
    """Host pids whose command line contains `mark` (sandboxed processes are visible from the host's /proc)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if mark.encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def wait_gone(mark: str, within_s: float = 3.0) -> list[int]:
    """Pids still carrying `mark` after waiting up to `within_s` (teardown is asynchronous by a few ms)."""
    deadline = time.monotonic() + within_s
    while True:
        left = processes_with(mark)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
