"""The verification pool: grade completions with any verifier, in worker processes with a hard wall-clock
limit per check, so a hanging or crashing checker costs a TIMEOUT or ERROR verdict, never the run.

Why processes and not threads: math-verify's own timeout uses `signal.alarm`, which only works in the main
thread; other frameworks that called it from a thread pool shipped silent all-zero rewards or training that
hung forever. A thread cannot be killed; a process can. So each check runs in a worker process and the
parent kills the worker (SIGKILL) when the check passes `timeout_s`, then forks a replacement.

Why fork: the workers need the verifier object itself, including ones registered in-process by a test
(`plugins.plugin_registered`) or by a third-party entry point. Forking copies the parent's already-built
verifier into the child, so nothing has to be pickled or re-imported, and a factory that only exists in
the parent's memory still works. The child only runs `verify` (pure Python: parsing, sympy, subprocesses),
never torch or CUDA, which is what makes forking a trainer process safe here. (Python 3.12+ warns that
forking a multi-threaded process may deadlock the child, e.g. on a lock another thread held at fork time;
such a child would simply run past its limit and be killed and replaced like any hung check.)

Verifiers that bring their own `verify_batch` (the code verifier runs its own sandboxes in parallel, with
its own timeouts) are called in-process instead; their results are still checked for shape and type.

Workers start lazily on the first `verify` and are reused across calls (the trainer grades every step).
Measured (benchmarks/verifiers.py, GSM8K-length solutions, timeouts on): on 2 quiet cores, 2 workers grade
~1500 `boxed` checks/s, 1.1x one in-process loop without a hard limit; 8 workers on 16 cores ~6900/s.
"""

from __future__ import annotations

import collections
import inspect
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from .plugins import get_registry
from .types import Verdict, VerifyResult

if TYPE_CHECKING:
    from .config import VerifierConfig

# the keyword arguments the core may pass to a verifier factory, when the factory names them
CORE_KWARGS = ("sandbox", "timeout_s")
MAX_CHUNK = 8  # items per message to a worker: fewer process switches, still balanced at the end of a batch

_in_worker = False


def in_worker() -> bool:
    """True inside a pool worker process. A verifier with its own soft time limit (a signal that interrupts
    Python code) can leave it off here: interrupting code mid-way (a first-time import, a cache update) can
    corrupt the process, and in a worker the pool's kill-and-replace is the clean way to end a slow check."""
    return _in_worker


def check_sandbox_allowed(vcfg: "VerifierConfig", unsafe: bool) -> None:
    """Refuse `verifier.sandbox=local` (untrusted code run without isolation) unless the user said --unsafe."""
    from .config import ConfigError

    if vcfg.sandbox != "local":
        return
    if not unsafe:
        raise ConfigError("verifier.sandbox=local runs untrusted code without isolation; pass --unsafe to allow it")
    print("treerpo: WARNING: verifier.sandbox=local: model-written code runs WITHOUT isolation, with your "
          "user's permissions (--unsafe given)", file=sys.stderr)


def create_verifier(name: str, options: dict | None = None, **core_kwargs) -> Any:
    """Build a verifier, passing the core's `sandbox=`/`timeout_s=` only to factories whose signature names
    them (or takes **kwargs), so third-party factories without those parameters keep working."""
    reg = get_registry().get("verifier", name)
    try:
        params = inspect.signature(reg.factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    passed = {k: v for k, v in core_kwargs.items() if k in CORE_KWARGS and (takes_any or k in params)}
    passed = {k: v for k, v in passed.items() if k not in (options or {})}  # a user option wins
    return get_registry().create("verifier", name, options, **passed)


def _as_result(value: Any, who: str) -> VerifyResult:
    """A verifier's return value as a VerifyResult; anything else is an ERROR naming what came back. The
    reason is made printable: a verifier quoting invalid UTF-8 input (lone surrogates) must not make the
    caller's JSON log or terminal output raise."""
    if not isinstance(value, VerifyResult):
        return VerifyResult(Verdict.ERROR, f"{who} returned {type(value).__name__} ({value!r:.80}), not a VerifyResult")
    reason = value.reason if isinstance(value.reason, str) else str(value.reason)
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if reason is value.reason else VerifyResult(value.verdict, reason)


def _check_one(verifier: Any, item: dict) -> VerifyResult:
    """One `verify` call with its exceptions turned into ERROR verdicts (the reason carries the exception)."""
    try:
        item = dict(item)
        completion = item.pop("completion")
        reference = item.pop("reference")
        return _as_result(verifier.verify(completion, reference, **item), f"{type(verifier).__name__}.verify")
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        return VerifyResult(Verdict.ERROR, f"{type(exc).__name__}: {exc}{where}"[:2000])


def _worker_main(conn: Connection, verifier: Any, parent_pid: int, inherited: list[Connection]) -> None:
    """Worker loop: receive a chunk [(index, item), ...], send (index, VerifyResult) after each check, until
    EOF or the parent is gone. Results stream back one by one, so the parent can time each check."""
    global _in_worker
    _in_worker = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then kills us
    for c in inherited:  # siblings' parent-side pipe ends, copied by fork; holding them would hide EOFs
        try:
            c.close()
        except OSError:
            pass
    while True:
        try:
            if not conn.poll(1.0):
                if os.getppid() != parent_pid:  # orphaned: the parent died without closing us
                    return
                continue
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        for index, item in chunk:
            result = _check_one(verifier, item)
            try:
                conn.send((index, result))
            except (EOFError, OSError):
                return
            except Exception as exc:  # e.g. a verifier put something unpicklable in the reason
                conn.send((index, VerifyResult(Verdict.ERROR, f"result could not be sent back: {type(exc).__name__}: {exc}")))


class _Worker:
    def __init__(self, ctx, verifier: Any, siblings: list[Connection]):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, verifier, os.getpid(), siblings + [self.conn]),
                                daemon=True, name="treerpo-verify")
        self.proc.start()
        child.close()
        self.chunk: collections.deque[int] = collections.deque()  # indices sent and not answered yet, in order
        self.deadline = 0.0  # when the check at the head of `chunk` runs out of time

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=5)
        except Exception:
            pass
        self.conn.close()


class VerifierPool:
    """Grades items `{"completion", "reference", **metadata}` with one verifier, in order, never hanging.

    `verifier` is an in-process instance (for `extract_answer` / `same_answer`, which are cheap)."""

    def __init__(self, verifier_name: str, options: dict | None = None, *, workers: int = 2,
                 timeout_s: float = 5.0, sandbox: str = "bwrap"):
        if workers < 1:
            raise ValueError(f"verifier.workers must be at least 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"verifier.timeout_s must be positive, got {timeout_s}")
        self.name = verifier_name
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.verifier = create_verifier(verifier_name, options, sandbox=sandbox, timeout_s=timeout_s)
        self._batch = callable(getattr(self.verifier, "verify_batch", None))
        self._pool: list[_Worker] = []
        self._ctx = mp.get_context("fork")
        self.replaced = 0  # workers killed and replaced (timeouts, crashes): a health figure for logs
        self._closed = False

    @classmethod
    def from_config(cls, vcfg: "VerifierConfig", name: str | None = None) -> "VerifierPool":
        verifier_name = name or vcfg.name
        if not verifier_name:
            from .config import ConfigError

            raise ConfigError("verifier.name is not set (and no task default was applied); pass --verifier NAME")
        return cls(verifier_name, vcfg.options, workers=vcfg.workers, timeout_s=vcfg.timeout_s, sandbox=vcfg.sandbox)

    # -- grading ---------------------------------------------------------------------------------
    def verify(self, items: list[dict]) -> list[VerifyResult]:
        items = list(items)
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "completion" not in item or "reference" not in item:
                raise ValueError(f"verify item {i}: expected a dict with 'completion' and 'reference', got {item!r:.100}")
        if not items:
            return []
        if self._batch:
            return self._verify_batch(items)
        return self._verify_in_workers(items)

    def _verify_batch(self, items: list[dict]) -> list[VerifyResult]:
        who = f"{type(self.verifier).__name__}.verify_batch"
        try:
            out = list(self.verifier.verify_batch(items))
        except Exception as exc:
            return [VerifyResult(Verdict.ERROR, f"{who} raised {type(exc).__name__}: {exc}")] * len(items)
        if len(out) != len(items):
            return [VerifyResult(Verdict.ERROR, f"{who} returned {len(out)} results for {len(items)} items")] * len(items)
        return [_as_result(r, who) for r in out]

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.verifier, [w.conn for w in self._pool])

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._pool[self._pool.index(w)] = self._spawn()
        self.replaced += 1

    def _verify_in_workers(self, items: list[dict]) -> list[VerifyResult]:
        """Items go out in chunks (one message per chunk, so a loaded machine does not pay a process switch per
        check) and each result comes back as soon as it is known, so a hang is pinned on the right check. The
        check at the head of a worker's chunk has `timeout_s` from the moment the previous result arrived (never
        less than its real running time); past it the worker is killed, that check is TIMEOUT and the rest of
        its chunk goes back to the queue."""
        while len(self._pool) < min(self.workers, len(items)):  # lazily, and no more than there is work for
            self._pool.append(self._spawn())
        results: list[VerifyResult | None] = [None] * len(items)
        queue = collections.deque(range(len(items)))
        pending = len(items)
        while pending:
            for w in list(self._pool):
                if w.chunk or not queue:
                    continue
                size = min(MAX_CHUNK, -(-len(queue) // len(self._pool)))
                chunk = [queue.popleft() for _ in range(size)]
                try:
                    w.conn.send([(i, items[i]) for i in chunk])
                except OSError:  # the worker died while idle: a fresh one takes the chunk
                    queue.extendleft(reversed(chunk))
                    self._replace(w)
                    continue
                except Exception as exc:  # unpicklable metadata (nothing was written to the pipe)
                    pending -= self._unsendable(chunk, items, results, queue, exc)
                    continue
                w.chunk.extend(chunk)
                w.deadline = time.monotonic() + self.timeout_s
            busy = [w for w in self._pool if w.chunk]
            if not busy:
                continue
            ready = wait([w.conn for w in busy], timeout=max(0.0, min(w.deadline for w in busy) - time.monotonic()))
            for w in busy:
                if w.conn in ready:
                    try:
                        while w.chunk and w.conn.poll():  # drain: a busy parent takes several at one wake-up
                            index, result = w.conn.recv()
                            if index != w.chunk[0]:
                                raise RuntimeError(f"worker answered item {index}, expected {w.chunk[0]}")
                            w.chunk.popleft()
                            results[index] = result
                            pending -= 1
                            w.deadline = time.monotonic() + self.timeout_s
                    except (EOFError, OSError):  # the worker died mid-check (segfault, os._exit, OOM kill)
                        w.proc.join(timeout=1)
                        pending -= self._give_up(w, queue, results, VerifyResult(
                            Verdict.ERROR, f"verifier worker died during the check (exit code {w.proc.exitcode})"))
                elif time.monotonic() >= w.deadline:
                    pending -= self._give_up(w, queue, results, VerifyResult(
                        Verdict.TIMEOUT, f"check ran past verifier.timeout_s={self.timeout_s:g}s; worker killed"))
        return results  # type: ignore[return-value]

    def _give_up(self, w: _Worker, queue: collections.deque, results: list, verdict: VerifyResult) -> int:
        """The head of `w`'s chunk gets `verdict`; the rest goes back to the front of the queue; `w` is replaced."""
        results[w.chunk.popleft()] = verdict
        queue.extendleft(reversed(w.chunk))
        w.chunk.clear()
        self._replace(w)
        return 1

    @staticmethod
    def _unsendable(chunk: list[int], items: list[dict], results: list, queue: collections.deque, exc: Exception) -> int:
        """A chunk failed to pickle: items that cannot be pickled get ERROR, the others go back to the queue (if
        none fails alone, the whole chunk gets ERROR, so the loop always makes progress)."""
        bad = {}
        for i in chunk:
            try:
                pickle.dumps(items[i])
            except Exception as item_exc:
                bad[i] = item_exc
        if not bad:
            bad = dict.fromkeys(chunk, exc)
        for i in reversed(chunk):
            if i in bad:
                results[i] = VerifyResult(Verdict.ERROR, f"item cannot be sent to a worker: {type(bad[i]).__name__}: {bad[i]}")
            else:
                queue.appendleft(i)
        return len(bad)

    # -- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        for w in self._pool:
            w.kill()
        self._pool = []
        if not self._closed:
            self._closed = True
            close = getattr(self.verifier, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
