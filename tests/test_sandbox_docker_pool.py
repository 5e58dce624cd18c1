"""The docker pool's lifecycle: containers replaced after a violation or `max_runs`, removed on close, and
orphans of a dead owner cleaned up by the next pool."""

from __future__ import annotations

import subprocess
import sys

import pytest

from test_sandbox_support import get_backend, run
from treerpo_core.types import Verdict
from treerpo_verifiers.sandbox import Limits, make_backend
from treerpo_verifiers.sandbox.docker_pool import LABEL, _alive, remove_orphans

pytestmark = pytest.mark.sandbox
OK = "def probe():\n    return 'ok'\n"


@pytest.fixture(scope="module")
def pool():
    """One small pool for the module (container start-up costs seconds); tests compare counters before/after."""
    get_backend("docker")  # skip (or fail under CI=true) without an engine and image
    b = make_backend("docker", Limits(timeout_s=2.0), pool_size=1, max_runs=2)
    b.warm()
    yield b
    b.close()


def container_ids(backend) -> set[str]:
    return {c.c.id for c in backend._all if c is not None}


def test_container_replaced_after_timeout(pool):
    before, replaced = container_ids(pool), pool.replaced
    assert run(pool, "def probe():\n    while True:\n        pass\n").verdict is Verdict.TIMEOUT
    assert pool.replaced == replaced + 1
    assert run(pool, OK).verdict is Verdict.PASS  # the replacement works
    assert container_ids(pool).isdisjoint(before)


def test_container_replaced_after_max_runs(pool):
    first, replaced = container_ids(pool), pool.replaced
    assert [run(pool, OK).verdict for _ in range(2)] == [Verdict.PASS] * 2  # max_runs=2: retired within these
    assert pool.replaced == replaced + 1
    assert run(pool, OK).verdict is Verdict.PASS
    assert container_ids(pool).isdisjoint(first)


def test_close_removes_every_container(pool):  # last: it closes the module's pool
    run(pool, OK)
    ids = container_ids(pool)
    pool.close()
    left = [c.id for c in pool.client.containers.list(all=True, filters={"label": LABEL})]
    assert ids and ids.isdisjoint(left)


def test_orphans_of_a_dead_owner_are_removed():
    """A process killed with SIGKILL runs no atexit hook; the next pool removes what it left behind."""
    get_backend("docker")
    code = ("import os, signal\nfrom treerpo_verifiers.sandbox import make_backend\n"
            "b = make_backend('docker', pool_size=1)\nb.warm()\nprint(len(b._all), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert out.strip() == "1", err
    client = get_backend("docker").client
    owner = lambda c: c.labels.get(f"{LABEL}.owner", "")  # noqa: E731
    orphans = [c.id for c in client.containers.list(all=True, filters={"label": LABEL}) if owner(c).endswith(f":{proc.pid}")]
    assert len(orphans) == 1, "the killed process should have left its container behind"
    assert not _alive(proc.pid)
    assert remove_orphans(client) >= 1
    left = {c.id for c in client.containers.list(all=True, filters={"label": LABEL})}
    assert left.isdisjoint(orphans)
