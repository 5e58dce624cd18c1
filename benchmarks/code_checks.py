"""Code checks per second on this machine: bwrap, the docker exec pool, and one `docker run` per check.

Each figure grades HumanEval canonical solutions (real tests, all expected to PASS; a wrong verdict aborts
the measurement) with the unit-tests verifier at 2 parallel checks (the issue's "2 cores"), after a warm-up,
and reports the median of several repeats. The last line is
`bwrap_checks_per_s=<x> docker_checks_per_s=<y>` (merged into benchmarks/verifiers.py).

    python benchmarks/code_checks.py [--n 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from treerpo_core.plugins import create_task
from treerpo_core.types import Verdict
from treerpo_verifiers.sandbox import Job, Limits
from treerpo_verifiers.sandbox.base import HARNESS_SOURCE, communicate, judge_report, new_token, request_bytes
from treerpo_verifiers.sandbox.image import DEFAULT_IMAGE
from treerpo_verifiers.unit_tests import UnitTestsVerifier

CONCURRENCY = 2


def humaneval_items(n: int) -> list[dict]:
    items = []
    for ex in list(create_task("humaneval").examples("test"))[:n]:
        items.append({"completion": ex.target, "reference": ex.reference, **ex.metadata})
    return items


def _rate(verifier: UnitTestsVerifier, items: list[dict], repeats: int) -> float:
    verifier.verify_batch(items[:CONCURRENCY])  # warm-up (docker: starts the containers)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        results = verifier.verify_batch(items)
        rates.append(len(items) / (time.perf_counter() - t0))
        bad = [r for r in results if r.verdict is not Verdict.PASS]
        if bad:
            raise RuntimeError(f"{len(bad)} canonical solutions did not PASS, e.g. {bad[0]}")
    return statistics.median(rates)


def bwrap_checks_per_s(n: int = 40, repeats: int = 3) -> float:
    with UnitTestsVerifier(sandbox="bwrap", timeout_s=10, concurrency=CONCURRENCY) as v:
        return _rate(v, humaneval_items(n), repeats)


def docker_checks_per_s(n: int = 40, repeats: int = 3) -> float:
    with UnitTestsVerifier(sandbox="docker", timeout_s=10, concurrency=CONCURRENCY) as v:
        v.backend.warm()
        return _rate(v, humaneval_items(n), repeats)


def docker_run_checks_per_s(n: int = 6, image: str = DEFAULT_IMAGE) -> float:
    """The plain alternative: a fresh `docker run --rm` per check (same limits, same harness)."""
    verifier = UnitTestsVerifier(sandbox="bwrap")  # only for assembling jobs the same way
    limits = Limits(timeout_s=60)
    jobs = [verifier.job(it["completion"], it["reference"], it) for it in humaneval_items(n)]
    verifier.close()

    def one(job: Job) -> None:
        token = new_token()
        cmd = ["docker", "run", "--rm", "-i", "--network", "none", "--read-only", "--tmpfs", "/tmp:size=64m",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "65534:65534",
               "--memory", "1g", "--pids-limit", "64", image, "python3", "-I", "-c", HARNESS_SOURCE]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        data = request_bytes(job, limits, reap_all=False) + token.encode() + b"\n"
        result, _ = judge_report(communicate(proc, data, limits.timeout_s), token, limits, "docker run")
        if result.verdict is not Verdict.PASS:
            raise RuntimeError(f"docker run check did not PASS: {result}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as ex:
        list(ex.map(one, jobs))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="checks per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bwrap = bwrap_checks_per_s(args.n, args.repeats)
    print(f"bwrap: {bwrap:.1f} checks/s (goal >= 20)")
    docker = docker_checks_per_s(args.n, args.repeats)
    print(f"docker pool (exec into warm containers): {docker:.1f} checks/s (goal >= 5)")
    per_run = docker_run_checks_per_s()
    print(f"docker run per check: {per_run:.2f} checks/s ({docker / per_run:.1f}x slower than the pool)")
    print(f"bwrap_checks_per_s={bwrap:.1f} docker_checks_per_s={docker:.1f}")


if __name__ == "__main__":
    main()
