"""Verifier throughput: `boxed` checks per second through the core's verification pool.

Completions are GSM8K-length worked solutions (the GSM8K test answers rewritten with a final `\\boxed{}`,
half of them with a wrong final answer), graded through `VerifierPool("boxed")` with the default hard
per-check limit (timeouts on) and `--workers` processes (2: this machine's cores). Every (answer, reference)
pair is distinct and each repeat uses a fresh pool, so the verifier's cache never answers for math-verify.
The in-process, single-process rate (no pool, no kill-able workers) is measured alongside as the plain
alternative.

The code checker's figures (bwrap, the docker exec pool, and one `docker run` per check, from
`benchmarks/code_checks.py`) follow unless `--no-code` is given.

    python benchmarks/verifiers.py [--checks 400] [--repeats 5] [--workers 2] [--data-file test.jsonl] [--no-code]

Last line: `boxed_checks_per_s=<x> bwrap_checks_per_s=<y> docker_checks_per_s=<z>` (medians over repeats).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from treerpo_core.types import Verdict

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def gsm8k_items(n: int, data_file: Path = GSM8K_TEST) -> list[dict]:
    """n items {completion, reference}: worked solutions, every other one with a wrong final answer."""
    from treerpo_core.plugins import create_task

    if Path(data_file).is_file():
        examples = list(create_task("gsm8k", {"data_file": str(data_file)}).examples("test"))
    else:  # no offline GSM8K copy: the arithmetic task's solutions are shorter but still real
        examples = list(create_task("arithmetic", {"test_size": n}).examples("test"))
    items = []
    for i in range(n):
        ex = examples[i % len(examples)]
        completion = ex.target
        if i % 2:
            completion = completion.replace(f"\\boxed{{{ex.reference}}}", f"\\boxed{{{int(float(ex.reference)) + 1 + i}}}")
        items.append({"completion": completion, "reference": ex.reference})
    return items


def bench_boxed(checks: int = 400, repeats: int = 5, workers: int = 2, timeout_s: float = 5.0,
                data_file: Path = GSM8K_TEST) -> float:
    """Median boxed checks per second through the pool; prints each repeat and the in-process baseline."""
    from treerpo_core.verify_pool import VerifierPool
    from treerpo_verifiers.boxed import BoxedVerifier

    items = gsm8k_items(checks, data_file)
    rates = []
    for r in range(repeats):
        with VerifierPool("boxed", workers=workers, timeout_s=timeout_s) as pool:
            pool.verify(items[:workers])  # start the workers outside the timed part (the trainer reuses them)
            start = time.perf_counter()
            results = pool.verify(items)
            elapsed = time.perf_counter() - start
        bad = [x for x in results if x.verdict in (Verdict.ERROR, Verdict.TIMEOUT)]
        passes = sum(x.verdict is Verdict.PASS for x in results)
        rates.append(len(items) / elapsed)
        print(f"repeat {r}: {rates[-1]:.0f} checks/s through the pool ({passes} PASS, {len(bad)} ERROR/TIMEOUT)")
    inproc = []
    for r in range(max(1, repeats // 2)):
        v = BoxedVerifier(timeout_s=timeout_s)  # fresh cache
        start = time.perf_counter()
        for it in items:
            v.verify(it["completion"], it["reference"])
        inproc.append(len(items) / (time.perf_counter() - start))
    base = statistics.median(inproc)
    pooled = statistics.median(rates)
    print(f"boxed_inprocess_checks_per_s={base:.0f} (one process, no hard limit)")
    print(f"pool/in-process ratio={pooled / base:.2f} with {workers} workers")
    return pooled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checks", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-file", type=Path, default=GSM8K_TEST, help="GSM8K test.jsonl (hub layout)")
    ap.add_argument("--code-checks", type=int, default=40, help="HumanEval checks per repeat for the code figures")
    ap.add_argument("--no-code", action="store_true", help="boxed only (no bwrap/docker needed)")
    args = ap.parse_args()
    rate = bench_boxed(args.checks, args.repeats, args.workers, data_file=args.data_file)
    if args.no_code:
        print(f"boxed_checks_per_s={rate:.0f}")
        return
    # the code checker's figures (benchmarks/code_checks.py), on the same last line
    from code_checks import bwrap_checks_per_s, docker_checks_per_s, docker_run_checks_per_s

    bwrap = bwrap_checks_per_s(args.code_checks, min(args.repeats, 3))
    docker = docker_checks_per_s(args.code_checks, min(args.repeats, 3))
    per_run = docker_run_checks_per_s()
    print(f"code checks: bwrap {bwrap:.1f}/s (goal >= 20), docker pool {docker:.1f}/s (goal >= 5), "
          f"one docker run per check {per_run:.2f}/s ({docker / per_run:.1f}x slower than the pool)")
    print(f"boxed_checks_per_s={rate:.0f} bwrap_checks_per_s={bwrap:.1f} docker_checks_per_s={docker:.1f}")


if __name__ == "__main__":
    main()
