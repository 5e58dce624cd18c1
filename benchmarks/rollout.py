"""Tree engine vs `model.generate`: does generation cost follow unique tokens? (issue 5, paper section 3.2)

    python benchmarks/rollout.py [--model smollm2-135m] [--prompts 4] [--leaves 16] [--max-new-tokens 128]
                                 [--repeats 3] [--data-file ../shared/data/gsm8k/test.jsonl]

For `--prompts` GSM8K prompts (the gsm8k task's own prompt format and `text` delimiter rule):
1. the tree engine grows one tree per prompt, all together, up to `--leaves` leaves
   (`--l-min` 8, `--h-th` 0.5 by default, so trees fill up within `--max-new-tokens`), timed;
2. `model.generate` samples `--leaves` completions per prompt (the same number of sequences as the trees
   have leaves) with the same sampling settings, each forced to the trees' mean path length
   (min_new_tokens = max_new_tokens), so both produce the same path sum; timed.
Each side runs `--repeats` times (different seeds); medians are reported.

Last line: `throughput_ratio=<a> tree_wall_ratio=<b>` with
  a = (tree unique tokens / tree wall time) / (generate tokens / generate wall time)    goal >= 0.8
  b = tree wall time / generate wall time                                               goal <= 0.6
and the line before it gives unique tokens over the path sum (what an engine that re-reads every path pays).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--leaves", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--l-min", type=int, default=8, help="tree.l_min, low enough that trees fill up")
    ap.add_argument("--h-th", type=float, default=0.5, help="tree.h_th")
    ap.add_argument("--data-file", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from treerpo_core.config import SamplingConfig, TreeConfig
    from treerpo_core.data import select
    from treerpo_core.models import encode_prompt, load_model
    from treerpo_core.plugins import create_delimiter, get_registry
    from treerpo_core.rollout.engine import TreeEngine

    task = get_registry().create("task", "gsm8k", {}, data_file=args.data_file)
    examples = select(task.examples("test"), limit=args.prompts, shuffle_seed=None)
    model, tokenizer = load_model(args.model, device="cpu")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    tree_cfg = TreeConfig(l_min=args.l_min, h_th=args.h_th, max_leaves=args.leaves, s_min=10**6)
    engine = TreeEngine(model, tokenizer, tree=tree_cfg, sampling=sampling, delimiter=create_delimiter(task.default_delimiter))
    print(f"model {args.model} on CPU ({torch.get_num_threads()} threads), {len(examples)} prompts, "
          f"up to {args.leaves} leaves per tree, l_min {args.l_min}, h_th {args.h_th}, sampling {sampling}", flush=True)

    prompts = [encode_prompt(tokenizer, ex.prompt) for ex in examples]
    tree_runs, gen_runs = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        trees = engine.grow(examples, seed=r)
        tree_s = time.perf_counter() - t0
        leaves = sum(len(t.leaves()) for t in trees)
        unique = sum(t.unique_tokens for t in trees)
        path_sum = sum(t.path_token_sum for t in trees)
        mean_len = max(1, round(path_sum / leaves))
        per_prompt = max(1, round(leaves / len(trees)))
        gen_s, gen_tokens = run_generate(model, tokenizer, prompts, per_prompt, mean_len, sampling, seed=r)
        tree_runs.append((tree_s, unique, path_sum, leaves))
        gen_runs.append((gen_s, gen_tokens))
        print(f"repeat {r}: tree {tree_s:.1f}s, {leaves} leaves, {unique} unique / {path_sum} path-sum tokens "
              f"(mean path {path_sum / leaves:.1f}); generate {gen_s:.1f}s for {len(prompts) * per_prompt} "
              f"sequences x {mean_len} tokens", flush=True)

    tree_s = statistics.median(t for t, *_ in tree_runs)
    gen_s = statistics.median(g for g, _ in gen_runs)
    tree_tps = statistics.median(u / t for t, u, _, _ in tree_runs)
    gen_tps = statistics.median(n / g for g, n in gen_runs)
    unique_ratio = statistics.median(u / p for _, u, p, _ in tree_runs)
    print(f"tree engine {tree_tps:.1f} unique tok/s, median {tree_s:.1f}s; generate {gen_tps:.1f} tok/s, "
          f"median {gen_s:.1f}s (medians of {args.repeats}; the machine is shared, so absolute numbers vary)")
    print(f"unique_over_path_sum={unique_ratio:.3f}")
    print(f"throughput_ratio={tree_tps / gen_tps:.3f} tree_wall_ratio={tree_s / gen_s:.3f}")


def run_generate(model, tokenizer, prompts, per_prompt, length, sampling, seed) -> tuple[float, int]:
    """`per_prompt` sampled completions of exactly `length` tokens for every prompt, in one left-padded batch."""
    width = max(len(p) for p in prompts)
    rows = [p for p in prompts for _ in range(per_prompt)]
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=sampling.temperature,
                             top_p=sampling.top_p, top_k=sampling.top_k,
                             repetition_penalty=sampling.repetition_penalty,
                             max_new_tokens=length, min_new_tokens=length, pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - t0
    return seconds, (out.shape[1] - width) * out.shape[0]


if __name__ == "__main__":
    main()
