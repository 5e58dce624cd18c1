"""Run configuration: one small dataclass per concern, loaded from YAML plus `--set section.key=value`.

Key names and defaults are the contract of ARCHITECTURE.md ("Config sections and defaults"). Every key is
reachable with `--set`; an unknown key is an error naming it and its closest matches. `*.options.*` keys are
free-form and go to the plugin factory as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """Bad configuration: unknown key, wrong type, unreadable file."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"  # alias registered by a plugin, hub id, or local directory
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or float32 / bfloat16 / float16
    attn_implementation: str = "sdpa"  # must honour a 4-D mask for packed trees (sdpa, flex_attention, eager)
    options: dict = field(default_factory=dict)  # passed to the model factory


@dataclass
class TaskConfig:
    name: str = "arithmetic"
    data_file: str | None = None  # local JSONL/parquet in the hub dataset's layout (offline)
    split: str = "train"
    offset: int = 0  # offset/limit apply after a seeded shuffle: disjoint SFT and RL subsets
    limit: int | None = None
    shuffle_seed: int = 0
    options: dict = field(default_factory=dict)  # passed to the task factory


@dataclass
class VerifierConfig:
    name: str | None = None  # None: the task's default verifier
    sandbox: str = "bwrap"  # code verifiers: bwrap | docker | local (local needs --unsafe)
    timeout_s: float = 5.0  # wall-clock limit per check; past it the verdict is TIMEOUT
    workers: int = 2  # verification worker processes
    options: dict = field(default_factory=dict)  # passed to the verifier factory


@dataclass
class TreeConfig:
    mode: str = "tree"  # tree (TreeRPO) | flat (GRPO: n_flat independent samples)
    delimiter: str | None = None  # delimiter rule; None: the task's default
    l_min: int = 150  # paper's L_min: a node's own segment must be at least this long to split
    h_th: float = 1.0  # paper's H_th: entropy threshold (nats, top-k renormalised) for a regular split
    entropy_top: int = 20  # the entropy is taken over the top-k raw logits
    max_depth: int = 7  # paper's k: no regular split at depth >= k
    s_min: int = 300  # ours (the paper gives none): leaves longer than this get a coverage sibling
    max_leaves: int = 64  # leaf budget per tree
    max_tree_tokens: int = 32768  # unique-token budget per tree
    n_flat: int = 8  # samples per prompt in flat mode


@dataclass
class SamplingConfig:
    temperature: float = 0.6
    top_p: float = 0.85
    top_k: int = 25
    repetition_penalty: float = 1.1
    max_new_tokens: int = 1024  # per root-to-leaf path


@dataclass
class LossConfig:
    eps_low: float = 0.2  # PPO clip below: ratio >= 1 - eps_low
    eps_high: float = 0.2  # PPO clip above: ratio <= 1 + eps_high
    ratio: str = "token"  # token: per-token ratios (paper's code) | node: one ratio per node (paper's text)
    aggregate: str = "token_mean"  # token_mean | node_mean | constant (Dr. GRPO)
    drop_zero_advantage: bool = False  # leave zero-advantage nodes out of the loss
    on_error: str = "fail"  # ERROR/TIMEOUT leaves: fail (reward 0) | drop (left out of the means)


@dataclass
class TrainConfig:
    prompts_per_step: int = 1  # as the paper's public code; raise it on a GPU
    ppo_epochs: int = 1  # the paper: one update per batch
    minibatches: int = 1
    max_packed_tokens: int = 4096  # tokens per packed tree forward (bigger trees are split into packs)
    grad_checkpointing: bool = False
    grad_accumulation: int = 1


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0


@dataclass
class RunConfig:
    output_dir: str | None = None  # None: runs/<timestamp>
    max_steps: int = 100
    seed: int = 0
    save_every: int = 50
    keep_last: int = 3
    dump_every: int = 10  # tree dumps every N steps
    eval_limit: int = 64  # held-out problems for the greedy accuracy in the run summary (0: skip)
    log_with: str | None = None  # accelerate trackers: tensorboard | wandb | all (None: metrics.jsonl only)


@dataclass
class SFTConfig:
    num_examples: int = 0  # 0 = no SFT warm-up
    epochs: int = 1
    lr: float = 3e-5
    batch_size: int = 8
    max_length: int = 1024  # tokens per example (prompt + target); longer ones are truncated
    packing: bool = False  # concatenate examples into rows of up to max_length tokens (block-diagonal mask)


@dataclass
class EvalConfig:
    mode: str = "greedy"  # greedy | maj@K | pass@K
    limit: int | None = None
    temperature: float = 0.7  # maj/pass sampling
    top_p: float = 0.8
    max_new_tokens: int = 1024
    batch_size: int = 8


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    tree: TreeConfig = field(default_factory=TreeConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # keys ("section.key") the user set in a file or with --set; task defaults never override these
    explicit: set = field(default_factory=set, repr=False, compare=False)

    # -- reading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> "Config":
        cfg = cls()
        if path is not None:
            cfg.update(read_yaml(path), source=str(path))
        for item in overrides:
            cfg.set(item)
        return cfg

    def update(self, data: dict, source: str = "config") -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        for section, values in data.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {section!r} must be a mapping, got {values!r}")
            for key, value in values.items():
                self.assign(f"{section}.{key}", value, source=source)

    def set(self, item: str) -> None:
        """Apply one `section.key=value` (value parsed as YAML, then typed by the field)."""
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        self.assign(key.strip(), _parse_scalar(raw), source="--set")

    def assign(self, dotted: str, value: Any, source: str = "config") -> None:
        parts = dotted.split(".")
        section_name = parts[0]
        sections = {f.name for f in dataclasses.fields(self) if f.name != "explicit"}
        if section_name not in sections:
            raise ConfigError(_unknown(source, dotted, sorted(sections)))
        section = getattr(self, section_name)
        if len(parts) < 2:
            raise ConfigError(f"{source}: {dotted!r} names a section; set a key, e.g. {section_name}.<key>=value")
        key = parts[1]
        fields = {f.name: f for f in dataclasses.fields(section)}
        if key not in fields:
            raise ConfigError(_unknown(source, dotted, [f"{section_name}.{k}" for k in fields]))
        if key == "options":
            if len(parts) == 2:
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: {dotted} must be a mapping")
                section.options.update(value)
            else:  # section.options.KEY[.SUB] = value, passed through untouched
                target = section.options
                for p in parts[2:-1]:
                    target = target.setdefault(p, {})
                target[parts[-1]] = value
        else:
            if len(parts) > 2:
                raise ConfigError(f"{source}: {dotted!r}: {section_name}.{key} has no sub-keys")
            setattr(section, key, _coerce(value, fields[key].type, f"{source}: {dotted}"))
        self.explicit.add(f"{section_name}.{key}")

    def apply_defaults(self, section_name: str, values: dict, source: str) -> None:
        """Apply defaults (e.g. a task's `tree_defaults`) to keys the user did not set explicitly."""
        for key, value in (values or {}).items():
            dotted = f"{section_name}.{key}"
            if dotted not in self.explicit:
                self.assign(dotted, value, source=source)
                self.explicit.discard(dotted)

    # -- writing ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "explicit"}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    return data


def _unknown(source: str, dotted: str, known: list[str]) -> str:
    close = difflib.get_close_matches(dotted, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return f"{source}: unknown config key {dotted!r}{hint}"


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Type a value by its field annotation (annotations are strings under `from __future__`)."""
    tp = eval(annotation, vars(typing), {}) if isinstance(annotation, str) else annotation  # noqa: S307 - our own annotations
    allowed = [tp]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        allowed = list(typing.get_args(tp))
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in allowed:
            return None
        raise ConfigError(f"{where}: may not be empty")
    for t in allowed:
        if t is type(None):
            continue
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            continue
        if t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            continue
        if t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    continue
            continue
        if t is str:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
            continue
        if t is dict and isinstance(value, dict):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")
