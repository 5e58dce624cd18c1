"""docker backend: a pool of long-lived, locked-down containers into which each check is `docker exec`'d.

`docker run` per check costs ~2.5 s here; an exec into a warm container ~0.1 s. Each container: network
"none", read-only root, size-capped tmpfs /tmp and /var/tmp and /dev/shm, memory/pids/CPU limits, all
capabilities dropped, no-new-privileges, and its own unprivileged uid (so RLIMIT_NPROC, counted per uid,
is per container). One check at a time per container. Between checks the harness itself kills every
leftover process of the uid and wipes the scratch dirs, and reports whether that worked; the container is
replaced after a timeout, a missing or unclean report, a sandbox error, or `max_runs` checks.

No container outlives its owner: `close()` and an atexit hook remove them; a container's pid 1 exits (and
the container removes itself) after `idle_s` without any exec, which covers an owner killed by SIGKILL;
and a new pool removes containers left by owners that no longer run on this host.
"""

from __future__ import annotations

import atexit
import os
import queue
import random
import socket
import struct
import threading
import time
import uuid
import weakref

from .base import HARNESS_SOURCE, Backend, Limits, RawRun, SandboxUnavailable
from .image import DEFAULT_IMAGE

LABEL = "treerpo.sandbox"
ACQUIRE_TIMEOUT_S = 300  # longest wait for a free container before the check is an ERROR
# pid 1 of each container: reap zombies; exit when no other process has existed for IDLE seconds
PID1 = """
import os, signal, time
IDLE = {idle}
def reap(*_):
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
signal.signal(signal.SIGCHLD, reap)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the program shares our uid; only `docker rm -f` ends us
last = time.monotonic()
while True:
    time.sleep(5)
    if any(p.isdigit() and p != "1" for p in os.listdir("/proc")):
        last = time.monotonic()
    elif time.monotonic() - last > IDLE:
        os._exit(0)
"""

_open_pools: "weakref.WeakSet[DockerPoolBackend]" = weakref.WeakSet()


@atexit.register
def _close_pools() -> None:
    for pool in list(_open_pools):
        pool.close()


def _client():
    try:
        import docker
    except ImportError as exc:
        raise SandboxUnavailable("verifier.sandbox=docker needs the docker SDK: pip install docker") from exc
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except Exception as exc:
        raise SandboxUnavailable(
            f"verifier.sandbox=docker: no Docker engine answered ({type(exc).__name__}: {exc}). Install one "
            f"(`apt-get install docker.io`) and start it (`systemctl start docker`, or `dockerd "
            f"--storage-driver=vfs --iptables=false --bridge=none &` where systemd is absent), or use bwrap") from exc


class _Container:
    def __init__(self, backend: "DockerPoolBackend"):
        self.uid = random.randint(100_000, 1_999_999)
        lim = backend.limits
        tmp = f"rw,nosuid,nodev,size={lim.tmp_mb}m,mode=1777"
        import docker

        self.c = backend.client.containers.run(
            backend.image, [backend.python, "-I", "-c", PID1.format(idle=backend.idle_s)], detach=True,
            name=f"treerpo-sbx-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            labels={LABEL: "1", f"{LABEL}.owner": f"{socket.gethostname()}:{os.getpid()}"},
            network_mode="none", read_only=True, tmpfs={"/tmp": tmp, "/var/tmp": tmp}, shm_size=lim.tmp_mb << 20,
            mem_limit=(lim.memory_mb + 3 * lim.tmp_mb + 128) << 20, memswap_limit=(lim.memory_mb + 3 * lim.tmp_mb + 128) << 20,
            pids_limit=lim.max_procs + 16, nano_cpus=int(backend.cpus * 1e9), cap_drop=["ALL"],
            security_opt=["no-new-privileges"], user=f"{self.uid}:{self.uid}", hostname="sandbox",
            environment={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}, working_dir="/tmp",
            ulimits=[docker.types.Ulimit(name="core", soft=0, hard=0)], auto_remove=True, ipc_mode="private")
        self.runs = 0

    def exec(self, api, python: list[str], data: bytes, timeout_s: float) -> RawRun:
        exec_id = api.exec_create(self.c.id, [*python, "-c", HARNESS_SOURCE], stdin=True, stdout=True,
                                  stderr=True, user=f"{self.uid}:{self.uid}", workdir="/tmp")["Id"]
        sock = api.exec_start(exec_id, socket=True)
        raw_sock = getattr(sock, "_sock", sock)
        deadline = time.monotonic() + timeout_s
        streams = {1: bytearray(), 2: bytearray()}
        timed_out = False
        try:
            raw_sock.sendall(data)
            buf = bytearray()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                raw_sock.settimeout(left)
                try:
                    chunk = raw_sock.recv(65536)
                except socket.timeout:
                    timed_out = True
                    break
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 8:  # docker's multiplexed stream: 1 byte stream id, 3 pad, 4 bytes size
                    kind, size = buf[0], struct.unpack(">I", bytes(buf[4:8]))[0]
                    if len(buf) < 8 + size:
                        break
                    if len(streams.get(kind, b"")) < (4 << 20):
                        streams.setdefault(kind, bytearray()).extend(buf[8:8 + size])
                    del buf[:8 + size]
        finally:
            try:
                sock.close()
            except Exception:
                pass
        code = None
        if not timed_out and b'"token"' not in streams[1]:  # the exit code only matters without a report
            code = api.exec_inspect(exec_id).get("ExitCode")
        return RawRun(bytes(streams[1]), bytes(streams[2]), code, timed_out, {"container": self.c.id})

    def remove(self) -> None:
        try:
            self.c.remove(force=True)
        except Exception:
            pass  # already gone (auto-removed after its idle exit, or the engine restarted)


class DockerPoolBackend(Backend):
    name = "docker"
    reaps = True  # containers outlive one check: the harness must clean up after the program

    def __init__(self, limits: Limits | None = None, *, image: str = DEFAULT_IMAGE, pool_size: int = 2,
                 max_runs: int = 200, python: str = "python3", cpus: float = 1.0, idle_s: int = 600,
                 site_packages: bool = False):
        super().__init__(limits)
        self.python_flags = ["-I"] if site_packages else ["-I", "-S"]  # -S: faster start, stdlib only
        self.image, self.pool_size, self.max_runs = image, int(pool_size), int(max_runs)
        self.python, self.cpus, self.idle_s = python, float(cpus), int(idle_s)
        self.client = None
        self._idle: "queue.Queue[_Container]" = queue.Queue()
        self._all: set[_Container] = set()
        self._starting = 0  # containers being created
        self._closed = False
        self._lock = threading.Lock()
        self.replaced = 0
        _open_pools.add(self)

    def check_available(self) -> None:
        import docker

        if self.client is None:
            self.client = _client()
            remove_orphans(self.client)
        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            hint = "run `treerpo sandbox build`" if self.image == DEFAULT_IMAGE else "build or load it"
            raise SandboxUnavailable(f"verifier.sandbox=docker: image {self.image!r} is not present; {hint}") from None

    # -- pool ------------------------------------------------------------------------------------------
    def _reserve(self) -> bool:
        """Claim a slot for a new container when the pool is not full (creation happens outside the lock)."""
        with self._lock:
            if len(self._all) + self._starting >= self.pool_size:
                return False
            self._starting += 1
            return True

    def _create(self) -> _Container:
        """Create a container in a reserved slot."""
        try:
            c = _Container(self)
        finally:
            with self._lock:
                self._starting -= 1
        with self._lock:
            if not self._closed:
                self._all.add(c)
                return c
        c.remove()  # the pool was closed while this container started
        raise SandboxUnavailable("the docker sandbox pool is closed")

    def _acquire(self) -> _Container:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        if self._reserve():
            return self._create()
        try:
            return self._idle.get(timeout=ACQUIRE_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(f"no sandbox container became free within {ACQUIRE_TIMEOUT_S}s") from None

    def _release(self, c: _Container, retire: bool) -> None:
        c.runs += 1
        if retire or c.runs >= self.max_runs:
            with self._lock:
                self._all.discard(c)
            c.remove()
            self.replaced += 1
            threading.Thread(target=self._add_idle, daemon=True).start()  # the next check need not wait
        else:
            self._idle.put(c)

    def _add_idle(self) -> None:
        if self._reserve():
            try:
                self._idle.put(self._create())
            except Exception:
                pass  # _acquire will try again and report the error itself

    def warm(self) -> None:
        """Start every container of the pool now, in parallel (creation takes seconds with the vfs driver)."""
        threads = [threading.Thread(target=self._add_idle) for _ in range(self.pool_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _run(self, data: bytes) -> RawRun:
        if self.client is None:
            self.check_available()
        for attempt in (0, 1):
            c = self._acquire()
            try:
                raw = c.exec(self.client.api, [self.python, *self.python_flags], data, self.limits.timeout_s)
            except Exception:
                self._release(c, retire=True)  # e.g. the container exited after idling: use a fresh one
                if attempt:
                    raise
                continue
            raw.info["handle"] = c
            return raw
        raise AssertionError("unreachable")

    def _after(self, raw: RawRun, result, report: dict) -> None:
        c = raw.info.pop("handle", None)
        if c is not None:
            dirty = raw.timed_out or not report or not report.get("clean") or result.verdict.value in ("TIMEOUT", "ERROR")
            self._release(c, retire=dirty)

    def close(self) -> None:
        """Remove every container, including ones still starting (waited for, so none is left behind)."""
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + 120
        while self._starting and time.monotonic() < deadline:
            time.sleep(0.1)
        with self._lock:
            containers, self._all = list(self._all), set()
        removers = [threading.Thread(target=c.remove) for c in containers]  # each takes seconds with vfs
        for t in removers:
            t.start()
        for t in removers:
            t.join()
        while not self._idle.empty():
            self._idle.get_nowait()
        _open_pools.discard(self)


def remove_orphans(client) -> int:
    """Remove sandbox containers whose owner process (on this host) is gone, e.g. killed by SIGKILL."""
    removed = 0
    host = socket.gethostname()
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        owner = (c.labels or {}).get(f"{LABEL}.owner", "")
        name, _, pid = owner.rpartition(":")
        if name == host and pid.isdigit() and not _alive(int(pid)):
            try:
                c.remove(force=True)
                removed += 1
            except Exception:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
