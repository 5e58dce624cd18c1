"""Records that cross module boundaries: verdicts, examples, tree nodes and trees.

The JSON forms here are the tree-dump contract of ARCHITECTURE.md: one `Tree.to_json()` object per line
of `trees/step-<n>.jsonl` and of `treerpo rollout --output`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator


class Verdict(str, enum.Enum):
    """A checker's decision on one completion. Only PASS earns reward; ERROR and TIMEOUT are counted
    apart from FAIL so a broken checker never hides inside the fail rate."""

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"  # the checker could not decide (crash, sandbox failure)
    TIMEOUT = "TIMEOUT"  # the check ran past its wall-clock limit

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class VerifyResult:
    verdict: Verdict
    reason: str = ""

    def __post_init__(self):
        # accept "PASS" as well as Verdict.PASS, so third-party verifiers can return plain strings
        if not isinstance(self.verdict, Verdict):
            object.__setattr__(self, "verdict", Verdict(str(self.verdict).upper()))

    @property
    def reward(self) -> float:
        return 1.0 if self.verdict is Verdict.PASS else 0.0

    def to_dict(self) -> dict:
        return {"verdict": self.verdict.value, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyResult":
        return cls(verdict=Verdict(d["verdict"]), reason=d.get("reason", ""))


@dataclass
class Example:
    """One task item. `prompt` is a list of chat messages ({"role", "content"}); `reference` is whatever
    the task's verifier compares against; `target` is a worked solution for SFT when the task has one."""

    id: str
    prompt: list[dict]
    reference: Any
    metadata: dict = field(default_factory=dict)
    target: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(**d)


NODE_KINDS = ("root", "forced", "entropy", "coverage", "sample")


@dataclass
class Node:
    """One segment of a reasoning tree. `token_ids` are this node's own tokens (not its prefix);
    `logprobs[i]` is log_softmax(logits / temperature) of `token_ids[i]` at sampling time."""

    id: int
    parent: int | None
    depth: int
    kind: str  # one of NODE_KINDS: how this node came to exist
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[float] = field(default_factory=list)
    split_entropy: float | None = None  # entropy that triggered the split below this node
    verdict: Verdict | None = None  # leaves only
    reward: float | None = None
    advantage: float | None = None

    def __post_init__(self):
        if self.kind not in NODE_KINDS:
            raise ValueError(f"node {self.id}: kind {self.kind!r} is not one of {NODE_KINDS}")
        if self.verdict is not None and not isinstance(self.verdict, Verdict):
            self.verdict = Verdict(self.verdict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict.value if self.verdict is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Node":
        return cls(**d)


@dataclass
class Tree:
    """A prompt's tree of segments. Nodes are stored in creation order; `nodes[0]` is the root, which
    holds no tokens (the prompt is `prompt_token_ids`)."""

    prompt_id: str
    prompt_token_ids: list[int]
    reference: Any
    nodes: list[Node] = field(default_factory=list)
    step: int | None = None
    info: dict = field(default_factory=dict)  # engine notes, e.g. which budget stopped branching

    # -- structure -------------------------------------------------------------------------------
    def node(self, node_id: int) -> Node:
        n = self.nodes[node_id]
        if n.id != node_id:  # ids are positions; keep that invariant loud rather than search
            raise ValueError(f"tree {self.prompt_id}: node at index {node_id} has id {n.id}")
        return n

    def children(self, node_id: int) -> list[Node]:
        return [n for n in self.nodes if n.parent == node_id]

    def leaves(self) -> list[Node]:
        parents = {n.parent for n in self.nodes}
        return [n for n in self.nodes if n.id not in parents and n.parent is not None]

    def path(self, node_id: int) -> list[Node]:
        """Nodes from the root's first child down to `node_id` (the root itself holds no tokens)."""
        out = []
        n = self.node(node_id)
        while n.parent is not None:
            out.append(n)
            n = self.node(n.parent)
        return out[::-1]

    def path_token_ids(self, node_id: int) -> list[int]:
        """Exactly the tokens sampled from the prompt down to the end of `node_id`."""
        return [t for n in self.path(node_id) for t in n.token_ids]

    def iter_paths(self) -> Iterator[tuple[Node, list[int]]]:
        for leaf in self.leaves():
            yield leaf, self.path_token_ids(leaf.id)

    @property
    def unique_tokens(self) -> int:
        return sum(len(n.token_ids) for n in self.nodes)

    @property
    def path_token_sum(self) -> int:
        return sum(len(p) for _, p in self.iter_paths())

    # -- JSON (tree-dump contract) ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "prompt_id": self.prompt_id,
            "prompt_token_ids": list(self.prompt_token_ids),
            "reference": self.reference,
            "nodes": [n.to_dict() for n in self.nodes],
            "info": self.info,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Tree":
        return cls(
            prompt_id=d["prompt_id"],
            prompt_token_ids=list(d["prompt_token_ids"]),
            reference=d["reference"],
            nodes=[Node.from_dict(n) for n in d["nodes"]],
            step=d.get("step"),
            info=d.get("info") or {},
        )

    @classmethod
    def from_json(cls, line: str) -> "Tree":
        return cls.from_dict(json.loads(line))
