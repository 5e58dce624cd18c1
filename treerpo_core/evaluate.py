"""Evaluation: greedy accuracy, maj@K and pass@K, with the statistics a report needs.

The paper evaluates GSM8K greedy (temperature 0) and maj@8 (8 samples at temperature 0.7, top-p 0.8,
majority vote over final answers); code tasks are usually scored with pass@K (Chen et al., 2021). All three
share one pipeline: generate `samples_per_example` completions per prompt in left-padded batches, grade every
completion with the verifier pool, then turn each example's verdicts into one score with the mode's scorer:

- greedy: 1 if the single completion passes.
- maj@K: the answer most of the K samples agree on (grouped with the verifier's `same_answer`, not string
  equality, so `0.5` and `1/2` vote together; ties go to the answer seen first); the score is the verdict of
  the earliest sample in that group.
- pass@K: the unbiased estimate 1 - C(n-c, K)/C(n, K) from n >= K samples of which c pass.

Per-example records are plain dicts (they are written to the per-example JSONL as they finish, which is what
makes an interrupted evaluation resumable; see `ResultsLog`).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from .types import Example, Verdict

if TYPE_CHECKING:
    from .verify_pool import VerifierPool

VERDICT_NAMES = tuple(v.value for v in Verdict)


class EvalError(ValueError):
    """A problem with the evaluation request (bad mode, verifier lacking what the mode needs, stale results)."""


# -- modes -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalMode:
    """`kind` is greedy | maj | pass; `k` the K of maj@K / pass@K (1 for greedy); `n` the samples drawn
    per example (n = K for maj@K; n >= K for pass@K, more samples lower the estimator's variance)."""

    kind: str
    k: int = 1
    n: int = 1

    @property
    def name(self) -> str:
        return "greedy" if self.kind == "greedy" else f"{self.kind}@{self.k}"

    @property
    def sampled(self) -> bool:
        return self.kind != "greedy"


def parse_mode(text: str, num_samples: int | None = None) -> EvalMode:
    """`greedy`, `maj@K` or `pass@K`; `num_samples` is pass@K's n (default K)."""
    text = text.strip().lower()
    if text == "greedy":
        if num_samples not in (None, 1):
            raise EvalError(f"mode greedy draws one completion per example; --samples {num_samples} is meaningless")
        return EvalMode("greedy")
    m = re.fullmatch(r"(maj|pass)@(\d+)", text)
    if not m or int(m.group(2)) < 1:
        raise EvalError(f"mode {text!r}: expected greedy, maj@K or pass@K with K >= 1 (e.g. maj@8, pass@1)")
    kind, k = m.group(1), int(m.group(2))
    n = k if num_samples is None else num_samples
    if kind == "maj" and n != k:
        raise EvalError(f"maj@{k} votes over exactly {k} samples; --samples {n} does not apply")
    if n < k:
        raise EvalError(f"pass@{k} needs at least {k} samples per example, got --samples {n}")
    return EvalMode(kind, k, n)


# -- statistics (pure) -------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021, eq. 1): 1 - C(n-c, k) / C(n, k).

    The binomials overflow floats for large n; the ratio is the product prod_{i=n-c+1}^{n} (1 - k/i),
    which stays in [0, 1] at every step. With fewer than k failures every k-subset holds a pass: 1."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    fail_all = 1.0
    for i in range(n - c + 1, n + 1):
        fail_all *= 1.0 - k / i
    return 1.0 - fail_all


def majority_vote(answers: list[str | None], same_answer: Callable[[str, str], bool]) -> tuple[int | None, int]:
    """Index of the sample whose answer wins the vote, and the winning group's size.

    Samples are grouped by `same_answer` against each group's first member (the verifier decides what
    counts as equal, e.g. `1/2` == `0.5`); samples without an answer do not vote. The largest group wins,
    ties to the group whose first member came earliest. Returns (None, 0) when no sample has an answer."""
    groups: list[list[int]] = []  # sample indices, in order of each group's first appearance
    for i, a in enumerate(answers):
        if a is None:
            continue
        for g in groups:
            if same_answer(answers[g[0]], a):
                g.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None, 0
    best = max(groups, key=len)  # max keeps the first of equal lengths: ties to the earliest
    return best[0], len(best)


def bootstrap_ci(scores: list[float], *, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example scores (resampling examples with
    replacement): the spread a benchmark of this size would show if drawn again."""
    if not scores:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(resamples))
    lo = means[int(math.floor((1 - level) / 2 * (resamples - 1)))]
    hi = means[int(math.ceil((1 + level) / 2 * (resamples - 1)))]
    return (lo, hi)


# -- scorers: one per mode kind, chosen once ---------------------------------------------------------
def _score_greedy(record: dict, mode: EvalMode, verifier: Any) -> dict:
    return {"score": 1.0 if record["verdicts"][0] == "PASS" else 0.0}


def _score_majority(record: dict, mode: EvalMode, verifier: Any) -> dict:
    winner, votes = majority_vote(record["answers"], verifier.same_answer)
    passed = winner is not None and record["verdicts"][winner] == "PASS"
    return {"score": 1.0 if passed else 0.0, "majority_index": winner,
            "majority_answer": None if winner is None else record["answers"][winner], "majority_votes": votes}


def _score_pass(record: dict, mode: EvalMode, verifier: Any) -> dict:
    c = sum(v == "PASS" for v in record["verdicts"])
    return {"score": pass_at_k(len(record["verdicts"]), c, mode.k), "num_correct": c}


SCORERS: dict[str, Callable[[dict, EvalMode, Any], dict]] = {
    "greedy": _score_greedy, "maj": _score_majority, "pass": _score_pass}


def require_voting(verifier: Any, name: str) -> None:
    missing = [m for m in ("extract_answer", "same_answer") if not callable(getattr(verifier, m, None))]
    if missing:
        raise EvalError(f"maj@K needs the verifier to extract and compare answers, but verifier {name!r} has no "
                        f"{' or '.join(missing)}; use pass@K or greedy with it, or a verifier that has them (e.g. boxed)")


# -- generation --------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 8, generator: torch.Generator | None = None) -> list[str]:
    """One completion per prompt (token ids), in input order. Temperature 0 is greedy decoding; otherwise
    temperature then nucleus (top-p) sampling, with no repetition penalty or top-k: the paper's eval settings
    are only temperature and top-p. Prompts are batched longest-first so rows of a batch have similar lengths."""
    inner = getattr(model, "module", model)  # the trainer may hand over a DDP-wrapped model
    eos = {tokenizer.eos_token_id} | _as_set(getattr(getattr(inner, "generation_config", None), "eos_token_id", None))
    eos.discard(None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        new_ids = decode_batch(model, [prompts[i] for i in rows], pad_id=pad, eos_ids=sorted(eos),
                               max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               generator=generator)
        for i, ids in zip(rows, new_ids):
            out[i] = tokenizer.decode(ids, skip_special_tokens=True)
    return out


@torch.no_grad()
def decode_batch(model, prompts: list[list[int]], *, pad_id: int, eos_ids: list[int], max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """New token ids per prompt (ending with the EOS token when one was produced).

    Why not `model.generate`: it keeps decoding every row of a batch until the longest is done, so one
    rambling completion makes the whole batch pay for max_new_tokens. Here a row leaves the batch (and its
    KV cache rows are dropped) as soon as it emits EOS, which on a CPU roughly halves evaluation time.
    Rows are left-padded; position ids count real tokens only, so padding does not shift positions."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, W)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    alive = torch.arange(len(prompts), device=device)  # original row of each row still decoding
    new_ids: list[list[int]] = [[] for _ in prompts]

    forward = _cached_forward(model)
    logits, cache = forward(ids, mask, positions, None)
    next_pos = positions[:, -1] + 1
    for step in range(max_new_tokens):
        token = _next_token(logits, temperature, top_p, generator)  # (b,)
        for r, t in zip(alive.tolist(), token.tolist()):
            new_ids[r].append(t)
        keep = (~torch.isin(token, eos)).nonzero().squeeze(1)
        if keep.numel() == 0 or step == max_new_tokens - 1:
            break
        if keep.numel() < alive.numel():  # finished rows leave the batch, cache included
            cache.batch_select_indices(keep)
            alive, mask, token, next_pos = alive[keep], mask[keep], token[keep], next_pos[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        logits, cache = forward(token[:, None], mask, next_pos[:, None], cache)
        next_pos = next_pos + 1
    return new_ids


def _cached_forward(model) -> Callable:
    """forward(ids, mask, positions, cache) -> (last-position logits (b, V) in fp32, new cache), across the
    transformers versions that call the KV-cache argument `cache` (5.x) or `past_key_values` (4.x)."""
    params = inspect.signature(getattr(model, "module", model).forward).parameters  # DDP: the wrapped model's
    cache_arg = "cache" if "cache" in params else "past_key_values"
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def forward(ids, mask, positions, cache):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_arg: cache}, **last_only)
        new_cache = getattr(out, "cache", None)
        return out.logits[:, -1, :].float(), new_cache if new_cache is not None else out.past_key_values

    return forward


def _next_token(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """(b, V) logits -> (b,) tokens: argmax at temperature 0, else a draw from the smallest set of tokens
    whose probability (at `temperature`) reaches `top_p`, renormalised."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above each one
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the top token always stays
    pick = torch.multinomial(sorted_probs, 1, generator=generator)  # multinomial renormalises
    return sorted_idx.gather(-1, pick).squeeze(-1)


def _as_set(x) -> set:
    if x is None:
        return set()
    return set(x) if isinstance(x, (list, tuple, set)) else {x}


# -- the evaluation loop -----------------------------------------------------------------------------
def evaluate(model, tokenizer, examples: list[Example], pool: "VerifierPool", mode: EvalMode, *,
             max_new_tokens: int, batch_size: int = 8, temperature: float = 0.7, top_p: float = 0.8,
             seed: int = 0, on_record: Callable[[dict], None] | None = None,
             progress: Callable[[int], None] | None = None) -> list[dict]:
    """Per-example records for `examples`, in order. Work is done in chunks of about `batch_size` sequences
    (a chunk holds whole examples, all their samples); each record is handed to `on_record` as soon as its
    chunk is graded, so a caller can persist it before the next chunk starts. `progress(n)` is called with
    the number of examples finished in each chunk.

    Sampling is seeded per chunk from `seed` and the chunk's first example id, so a resumed run draws the
    same samples for a chunk whatever was done before it."""
    from .models import encode_prompt

    if mode.kind == "maj":
        require_voting(pool.verifier, pool.name)
    scorer = SCORERS[mode.kind]
    extract = getattr(pool.verifier, "extract_answer", None)
    per_chunk = max(1, batch_size // mode.n)
    was_training = model.training
    model.eval()
    records = []
    try:
        for start in range(0, len(examples), per_chunk):
            chunk = examples[start:start + per_chunk]
            prompts = [encode_prompt(tokenizer, ex.prompt) for ex in chunk for _ in range(mode.n)]
            generator = None
            if mode.sampled:  # a private generator: evaluating inside training leaves the global RNG alone
                generator = torch.Generator(device=next(model.parameters()).device)
                generator.manual_seed(seed * 1_000_003 + zlib.crc32(str(chunk[0].id).encode()))
            texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, generator=generator,
                             temperature=temperature if mode.sampled else 0.0, top_p=top_p, batch_size=batch_size)
            results = pool.verify([{"completion": t, "reference": ex.reference, **ex.metadata}
                                   for ex, t in zip((ex for ex in chunk for _ in range(mode.n)), texts)])
            for j, ex in enumerate(chunk):
                samples = texts[j * mode.n:(j + 1) * mode.n]
                graded = results[j * mode.n:(j + 1) * mode.n]
                record = {
                    "id": ex.id, "mode": mode.name, "reference": ex.reference,
                    "source": ex.metadata.get("source"),
                    "samples": samples,
                    "answers": [_safe_extract(extract, s) for s in samples] if extract else None,
                    "verdicts": [r.verdict.value for r in graded],
                    "reasons": [r.reason for r in graded],
                }
                record.update(scorer(record, mode, pool.verifier))
                records.append(record)
                if on_record is not None:
                    on_record(record)
            if progress is not None:
                progress(len(chunk))
    finally:
        model.train(was_training)
    return records


def _safe_extract(extract: Callable[[str], Any], text: str) -> str | None:
    """A verifier's extract_answer that raises is treated as "no answer" (the sample then casts no vote);
    the sample's own verdict still comes from `verify`, which reports the problem as ERROR."""
    try:
        answer = extract(text)
    except Exception:
        return None
    return None if answer is None else str(answer)


def summarize(records: list[dict], mode: EvalMode, *, ci_seed: int = 0) -> dict:
    """The report's statistics over per-example records: accuracy (the mode's headline number, mean score),
    bootstrap 95 % CI, per-source breakdown (when examples carry a `source`), verdict counts over samples."""
    scores = [r["score"] for r in records]
    verdicts = Counter(v for r in records for v in r["verdicts"])
    report = {
        "mode": mode.name,
        "accuracy": sum(scores) / len(scores) if scores else float("nan"),
        "num_examples": len(records),
        "samples_per_example": mode.n,
        "num_samples": sum(len(r["verdicts"]) for r in records),
        "ci95": list(bootstrap_ci(scores, seed=ci_seed)),
        "verdicts": {name: verdicts.get(name, 0) for name in VERDICT_NAMES},
    }
    if mode.kind == "pass":
        report["k"] = mode.k
    sources: dict[str, list[float]] = {}
    for r in records:
        if r.get("source") is not None:
            sources.setdefault(str(r["source"]), []).append(r["score"])
    if sources:
        report["by_source"] = {s: {"accuracy": sum(v) / len(v), "num_examples": len(v)}
                               for s, v in sorted(sources.items())}
    return report


def greedy_accuracy(model, tokenizer, examples: list[Example], pool: "VerifierPool", *, max_new_tokens: int,
                    batch_size: int = 8) -> dict:
    """Greedy accuracy of `model` on `examples` (the trainer's held-out check): {"accuracy", "n", "verdicts"}.
    The model is returned in the train/eval mode it had."""
    mode = EvalMode("greedy")
    records = evaluate(model, tokenizer, examples, pool, mode, max_new_tokens=max_new_tokens, batch_size=batch_size)
    s = summarize(records, mode)
    return {"accuracy": s["accuracy"], "n": s["num_examples"], "verdicts": s["verdicts"]}


# -- the per-example log (resumption) ----------------------------------------------------------------
class ResultsLog:
    """The per-example JSONL beside a report: one record per finished example, appended and flushed as it
    finishes, so a crash loses at most the chunk in flight. Opening an existing log reads the records already
    there (a torn last line, from a crash mid-write, is cut off) so a rerun can skip those examples.

    Each record carries the mode, model and task it was made with; a log made with different ones is refused
    rather than mixed into a report it does not belong to."""

    def __init__(self, path: str | Path, *, identity: dict):
        self.path = Path(path)
        self.identity = identity
        self.done: dict[str, dict] = {}
        if self.path.exists():
            self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        raw = self.path.read_bytes()
        keep = raw[:raw.rfind(b"\n") + 1]  # everything up to the last complete line
        for lineno, line in enumerate(keep.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalError(f"{self.path}, line {lineno}: not valid JSON ({exc.msg}); delete the file to start over") from exc
            for key, want in self.identity.items():
                if rec.get(key) != want:
                    raise EvalError(
                        f"{self.path} holds results for {key}={rec.get(key)!r}, not {want!r}; pass a different "
                        "--output or delete the file to start over")
            self.done[str(rec["id"])] = rec
        if len(keep) != len(raw):
            with open(self.path, "r+b") as fh:
                fh.truncate(len(keep))

    def append(self, record: dict) -> None:
        rec = {**self.identity, **record}
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done[str(rec["id"])] = rec

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResultsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def examples_jsonl_path(report_path: str | Path) -> Path:
    """`eval-gsm8k-greedy.json` -> `eval-gsm8k-greedy.examples.jsonl` (beside the report)."""
    p = Path(report_path)
    return p.with_name(p.stem + ".examples.jsonl") if p.suffix == ".json" else p.with_name(p.name + ".examples.jsonl")


def pending(examples: Iterable[Example], done: dict[str, dict]) -> list[Example]:
    return [ex for ex in examples if str(ex.id) not in done]
