"""Short bf16 TreeRPO training on a GPU: proves the CUDA path needs no code changes and measures step time.

    python benchmarks/gpu_step.py [--model smollm2-135m] [--steps 8] [--prompts-per-step 8] [--out DIR]

Runs `treerpo run` on the arithmetic task with `model.dtype=auto` (bf16 on a GPU that supports it), SFT off,
then reads metrics.jsonl. Prints the median step time and its phases; the last line is
`gpu_step_s=<median> rollout_s=<..> verify_s=<..> train_s=<..> device=<name> dtype=<dtype>`.
Refuses to run without CUDA (this is the GPU check; the CPU path is covered by the test suite).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_step.py needs a CUDA device")
    out = Path(args.out or tempfile.mkdtemp(prefix="treerpo-gpu-"))
    cmd = [sys.executable, "-m", "treerpo_cli.main", "run", "--task", "arithmetic", "--model", args.model, "--max-steps", str(args.steps),
           "--output-dir", str(out), "--no-progress",
           "--set", "model.dtype=auto", "--set", f"train.prompts_per_step={args.prompts_per_step}",
           "--set", "run.eval_limit=0", "--set", "run.save_every=1000", "--set", "run.dump_every=1000",
           "--set", "sampling.max_new_tokens=128", "--set", "optim.lr=1e-5"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[1:] if len(rows) > 2 else rows  # the first step pays for CUDA warm-up and kernel selection
    phases = {k: statistics.median(r[f"time/{k}"] for r in rows) for k in ("rollout", "verify", "train")}
    step = statistics.median(sum(r[f"time/{k}"] for k in ("rollout", "verify", "train")) for r in rows)
    config = (out / "config.yaml").read_text()
    dtype = "bf16" if torch.cuda.is_bf16_supported() and "dtype: auto" in config else "see config"
    for r in rows:
        print(f"step {r['step']}: reward_mean={r['reward_mean']:.3f} leaves={r['tree/leaves']:.1f} "
              f"unique_tokens={r['tokens/unique']:.0f} rollout={r['time/rollout']:.2f}s "
              f"verify={r['time/verify']:.2f}s train={r['time/train']:.2f}s")
    print(f"gpu_step_s={step:.3f} rollout_s={phases['rollout']:.3f} verify_s={phases['verify']:.3f} "
          f"train_s={phases['train']:.3f} device={torch.cuda.get_device_name().replace(' ', '_')} dtype={dtype}")


if __name__ == "__main__":
    main()
