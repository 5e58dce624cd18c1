"""The verification pool with real worker processes: timeouts kill and replace workers, exceptions become
ERROR, order is kept, checks run in parallel, and in-process plugins reach the workers."""

from __future__ import annotations

import os
import time

import pytest

from treerpo_core import plugins
from treerpo_core.config import ConfigError, VerifierConfig
from treerpo_core.plugins import hookimpl
from treerpo_core.types import Verdict, VerifyResult
from treerpo_core.verify_pool import VerifierPool, check_sandbox_allowed


class Scripted:
    """Does what the completion says: "pass", "fail", "sleep:<s>", "forever", "raise", "exit", "junk",
    "pid" (PASS with the worker's pid as reason), "echo" (reason = the item's metadata)."""

    def verify(self, completion, reference, **metadata):
        if completion == "forever":
            while True:
                time.sleep(1)
        if completion.startswith("sleep:"):
            time.sleep(float(completion.split(":")[1]))
            return VerifyResult(Verdict.PASS, "slept")
        if completion == "raise":
            raise ZeroDivisionError("scripted failure")
        if completion == "exit":
            os._exit(3)
        if completion == "junk":
            return 1.0
        if completion == "pid":
            return VerifyResult(Verdict.PASS, str(os.getpid()))
        if completion.startswith("quote:"):
            return VerifyResult(Verdict.FAIL, f"got {completion[6:]}")
        if completion == "echo":
            return VerifyResult(Verdict.PASS, f"{reference}|{sorted(metadata.items())}")
        return VerifyResult(Verdict.PASS if completion == reference else Verdict.FAIL)


class Batched:
    def __init__(self, broken: bool = False):
        self.broken = broken

    def verify(self, completion, reference, **metadata):
        raise AssertionError("the pool must call verify_batch, not verify")

    def verify_batch(self, items):
        if self.broken:
            return [VerifyResult(Verdict.PASS)]  # wrong length
        return [VerifyResult(Verdict.PASS, str(os.getpid())) for _ in items]


class NoCoreKwargs:
    def __init__(self, threshold: int = 1):  # names neither sandbox nor timeout_s
        self.threshold = threshold

    def verify(self, completion, reference, **metadata):
        return VerifyResult(Verdict.PASS if len(completion) >= self.threshold else Verdict.FAIL)


class WithCoreKwargs(NoCoreKwargs):
    def __init__(self, sandbox: str = "none", timeout_s: float = 0.0):
        super().__init__()
        self.sandbox, self.timeout_s = sandbox, timeout_s


class TestPlugin:
    @staticmethod
    @hookimpl
    def treerpo_register_verifiers(register):
        register("scripted", Scripted)
        register("batched", Batched)
        register("no-core-kwargs", NoCoreKwargs)
        register("with-core-kwargs", WithCoreKwargs)


@pytest.fixture
def registered():
    with plugins.plugin_registered(TestPlugin, "test-pool-plugin"):
        yield


def item(completion, reference="x", **meta):
    return {"completion": completion, "reference": reference, **meta}


def test_in_process_plugin_runs_in_worker_processes(registered):
    with VerifierPool("scripted", workers=2) as pool:
        results = pool.verify([item("pid") for _ in range(6)])
    pids = {int(r.reason) for r in results}
    assert all(r.verdict is Verdict.PASS for r in results)
    assert os.getpid() not in pids


def test_order_is_preserved_with_uneven_durations(registered):
    items = [item(f"sleep:{0.15 if i % 3 == 0 else 0}") if i % 2 else item("echo", reference=str(i), k=i)
             for i in range(10)]
    with VerifierPool("scripted", workers=2) as pool:
        results = pool.verify(items)
    for i, r in enumerate(results):
        assert r.reason == ("slept" if i % 2 else f"{i}|[('k', {i})]")


def test_hanging_check_times_out_and_worker_is_replaced(registered):
    with VerifierPool("scripted", workers=1, timeout_s=0.5) as pool:
        start = time.monotonic()
        results = pool.verify([item("forever"), item("x"), item("y")])
        elapsed = time.monotonic() - start
        assert [r.verdict for r in results] == [Verdict.TIMEOUT, Verdict.PASS, Verdict.FAIL]
        assert "timeout_s=0.5" in results[0].reason
        assert elapsed < 3
        assert pool.replaced == 1
        # the replacement keeps serving later calls
        assert [r.verdict for r in pool.verify([item("x")])] == [Verdict.PASS]


def test_timed_out_worker_process_is_gone(registered):
    with VerifierPool("scripted", workers=1, timeout_s=0.3) as pool:
        pid_before = int(pool.verify([item("pid")])[0].reason)
        assert pool.verify([item("forever")])[0].verdict is Verdict.TIMEOUT
        pid_after = int(pool.verify([item("pid")])[0].reason)
    assert pid_after != pid_before
    with pytest.raises(ProcessLookupError):
        os.kill(pid_before, 0)


def test_exception_is_error_with_the_exception_in_the_reason(registered):
    with VerifierPool("scripted", workers=2) as pool:
        results = pool.verify([item("raise"), item("x")])
    assert results[0].verdict is Verdict.ERROR
    assert "ZeroDivisionError: scripted failure" in results[0].reason
    assert results[1].verdict is Verdict.PASS


def test_non_result_return_is_error(registered):
    with VerifierPool("scripted", workers=1) as pool:
        (r,) = pool.verify([item("junk")])
    assert r.verdict is Verdict.ERROR and "float" in r.reason and "VerifyResult" in r.reason


def test_reason_quoting_invalid_utf8_is_made_printable(registered):
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")
    with VerifierPool("scripted", workers=1) as pool:
        (r,) = pool.verify([item("quote:" + bad)])
    assert r.reason == "got \\udcff\\udcfe"
    r.reason.encode("utf-8")


def test_worker_dying_mid_check_is_error_and_replaced(registered):
    with VerifierPool("scripted", workers=1) as pool:
        results = pool.verify([item("exit"), item("x")])
    assert results[0].verdict is Verdict.ERROR and "exit code 3" in results[0].reason
    assert results[1].verdict is Verdict.PASS


def test_unpicklable_metadata_is_error_for_that_item_only(registered):
    with VerifierPool("scripted", workers=1) as pool:
        results = pool.verify([item("x"), item("x", callback=lambda: None), item("y")])
    assert [r.verdict for r in results] == [Verdict.PASS, Verdict.ERROR, Verdict.FAIL]
    assert "cannot be sent" in results[1].reason


def test_rest_of_a_chunk_survives_a_timeout(registered):
    # one worker gets all items in one chunk; the hang in the middle must not take the later ones with it
    with VerifierPool("scripted", workers=1, timeout_s=0.5) as pool:
        results = pool.verify([item("x"), item("forever"), item("x"), item("y"), item("x")])
    assert [r.verdict for r in results] == [Verdict.PASS, Verdict.TIMEOUT, Verdict.PASS, Verdict.FAIL, Verdict.PASS]


def test_checks_run_in_parallel(registered):
    n, workers, sleep = 8, 4, 0.3
    with VerifierPool("scripted", workers=workers, timeout_s=5) as pool:
        pool.verify([item("x")] * workers)  # start the workers outside the timed part
        start = time.monotonic()
        results = pool.verify([item(f"sleep:{sleep}")] * n)
        elapsed = time.monotonic() - start
    assert all(r.verdict is Verdict.PASS for r in results)
    # serial would take n * sleep = 2.4 s; in parallel about n / workers * sleep = 0.6 s
    assert elapsed < n * sleep / 2, elapsed


def test_workers_are_reused_across_calls(registered):
    with VerifierPool("scripted", workers=2) as pool:
        first = {r.reason for r in pool.verify([item("pid")] * 4)}
        second = {r.reason for r in pool.verify([item("pid")] * 4)}
    assert second <= first


def test_verify_batch_is_called_in_process(registered):
    with VerifierPool("batched") as pool:
        results = pool.verify([item("a"), item("b")])
    assert [r.reason for r in results] == [str(os.getpid())] * 2


def test_verify_batch_with_wrong_length_is_error(registered):
    with VerifierPool("batched", {"broken": True}) as pool:
        results = pool.verify([item("a"), item("b")])
    assert [r.verdict for r in results] == [Verdict.ERROR] * 2 and "1 results for 2 items" in results[0].reason


def test_core_kwargs_reach_only_factories_that_name_them(registered):
    with VerifierPool("no-core-kwargs", {"threshold": 2}, sandbox="docker", timeout_s=3) as pool:
        assert pool.verifier.threshold == 2
    with VerifierPool("with-core-kwargs", sandbox="docker", timeout_s=3) as pool:
        assert (pool.verifier.sandbox, pool.verifier.timeout_s) == ("docker", 3)


def test_from_config_uses_name_override_and_settings(registered):
    vcfg = VerifierConfig(name="with-core-kwargs", sandbox="local", timeout_s=2.5, workers=3)
    with VerifierPool.from_config(vcfg) as pool:
        assert (pool.workers, pool.timeout_s, pool.verifier.sandbox) == (3, 2.5, "local")
    with VerifierPool.from_config(vcfg, name="scripted") as pool:
        assert isinstance(pool.verifier, Scripted)


def test_bad_item_is_rejected_naming_its_index(registered):
    with VerifierPool("scripted") as pool, pytest.raises(ValueError, match="item 1"):
        pool.verify([item("x"), {"completion": "y"}])


def test_close_kills_workers(registered):
    pool = VerifierPool("scripted", workers=2)
    pids = {int(r.reason) for r in pool.verify([item("pid")] * 4)}
    pool.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_local_sandbox_needs_unsafe(capsys):
    with pytest.raises(ConfigError, match="--unsafe"):
        check_sandbox_allowed(VerifierConfig(sandbox="local"), unsafe=False)
    check_sandbox_allowed(VerifierConfig(sandbox="local"), unsafe=True)
    assert "WITHOUT isolation" in capsys.readouterr().err
    check_sandbox_allowed(VerifierConfig(sandbox="bwrap"), unsafe=False)
    assert capsys.readouterr().err == ""
