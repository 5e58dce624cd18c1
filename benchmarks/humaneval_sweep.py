"""All 164 HumanEval canonical solutions, and a broken version of each, through each sandbox backend.

"Judged right" means: canonical -> PASS and broken -> FAIL. The broken version puts `return None` before
the canonical body, so it has the same syntax and imports but a wrong answer. Prints one line per backend
and lists every misjudged problem; exits 1 if any.

    python benchmarks/humaneval_sweep.py [--sandbox bwrap --sandbox docker]
"""

from __future__ import annotations

import argparse
import sys
import time

from treerpo_core.plugins import create_task
from treerpo_core.types import Verdict
from treerpo_verifiers.unit_tests import UnitTestsVerifier


def sweep_items() -> list[tuple[str, Verdict, dict]]:
    out = []
    for ex in create_task("humaneval").examples("test"):
        body = ex.target[len("```python\n") + len(ex.metadata["prompt"]):].rsplit("```", 1)[0]
        for completion, expected in ((body, Verdict.PASS), ("    return None\n" + body, Verdict.FAIL)):
            out.append((ex.id, expected, {"completion": completion, "reference": ex.reference, **ex.metadata}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sandbox", action="append", choices=["bwrap", "docker"])
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    items = sweep_items()
    failed = False
    for name in args.sandbox or ["bwrap", "docker"]:
        with UnitTestsVerifier(sandbox=name, timeout_s=15, concurrency=args.concurrency) as v:
            t0 = time.perf_counter()
            results = v.verify_batch([it for _, _, it in items])
            elapsed = time.perf_counter() - t0
        wrong = [(tid, exp, r) for (tid, exp, _), r in zip(items, results) if r.verdict is not exp]
        canon = sum(1 for (_, exp, _), r in zip(items, results) if exp is Verdict.PASS and r.verdict is exp)
        broke = sum(1 for (_, exp, _), r in zip(items, results) if exp is Verdict.FAIL and r.verdict is exp)
        print(f"{name}: judged right {len(items) - len(wrong)}/{len(items)} (canonical PASS {canon}/164, "
              f"broken FAIL {broke}/164) in {elapsed:.1f}s")
        for tid, exp, r in wrong:
            print(f"  {tid}: expected {exp.value}, got {r.verdict.value}: {r.reason[:200]}")
        failed |= bool(wrong)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
