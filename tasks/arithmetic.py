"""Task `arithmetic`: procedural multi-step integer word problems with exact answers and worked solutions.

It is the embedded default (`treerpo run` with no arguments): offline, graded by the `boxed` verifier, with
solutions short enough (~40 tokens) for a 135M model to learn the format from a few hundred examples.
SmolLM2-135M-Instruct solves ~0 of these untrained and rarely writes `\\boxed{}`; after a short SFT warm-up on
the worked solutions it solves about half of the default 1-3-step problems, the middle ground where a group
of samples disagrees and RL has signal. The difficulty knobs move that point.

Example (3 steps):
    Mia has 21 apples. She buys 4 more. Then she gives 7 to a friend. How many apples does Mia have now?
    target:  21 + 4 = 25
             25 - 7 = 18
             \\boxed{18}

Splits come from distinct seeds: `test` is a fixed set of `test_size` problems; `train` is `train_size`
problems generated on the fly (deterministic, none identical to a test problem).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from treerpo_core.data import DataError
from treerpo_core.plugins import hookimpl
from treerpo_core.types import Example

from .math_common import math_prompt

NAMES = [("Mia", "she", "her"), ("Leo", "he", "his"), ("Ava", "she", "her"), ("Sam", "he", "his"),
         ("Zoe", "she", "her"), ("Ben", "he", "his"), ("Lily", "she", "her"), ("Omar", "he", "his"),
         ("Nina", "she", "her"), ("Raj", "he", "his"), ("Emma", "she", "her"), ("Tom", "he", "his"),
         ("Sara", "she", "her"), ("Ivan", "he", "his"), ("Yuki", "she", "her"), ("Luca", "he", "his")]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells", "cards", "stamps",
         "balloons", "buttons", "eggs", "toy cars", "flowers", "crayons"]
# one sentence per operation; {p}: pronoun, {q}: possessive, {b}: operand
PHRASES = {
    "+": ["{P} buys {b} more.", "{P} finds {b} more.", "A friend gives {o} {b} more.", "{P} gets {b} more as a gift."],
    "-": ["{P} gives {b} to a friend.", "{P} loses {b}.", "{P} sells {b} of them.", "{P} uses {b} of them."],
    "*": ["{P} ends up with {b} times as many as before."],
    "/": ["{P} splits them into {b} equal groups and keeps one group."],
}
SYMBOL = {"+": "+", "-": "-", "*": "*", "/": "/"}
SPLIT_SEEDS = {"train": "train", "test": "test"}  # distinct seeds: the two splits never share a generator


@dataclass(frozen=True)
class Problem:
    question: str
    steps: list[str]  # one line per step, "21 + 4 = 25"
    answer: int

    @property
    def target(self) -> str:
        return "\n".join(self.steps + [f"\\boxed{{{self.answer}}}"])


class ArithmeticTask:
    default_verifier = "boxed"
    default_delimiter = "equation"
    # Solutions are ~40 tokens, so the paper's l_min = 150 would never let a node split. A node may split after
    # 8 of its own tokens (about one "21 + 4 = 25" line) at an `=` or line end; a leaf whose own segment passes
    # 64 tokens (a rambling answer) gets a coverage sibling. 16 leaves x ~40 tokens keeps a tree to ~1k tokens,
    # minutes per hundred steps on a CPU.
    tree_defaults = {"l_min": 8, "s_min": 64, "max_depth": 7, "max_leaves": 16, "max_tree_tokens": 2048}

    def __init__(self, data_file: str | None = None, min_steps: int = 1, max_steps: int = 3, max_number: int = 30,
                 max_value: int = 200, ops: str = "+-*", seed: int = 0, train_size: int = 20_000,
                 test_size: int = 300):
        """Difficulty: `min_steps`..`max_steps` operations per problem, starting numbers and addends up to
        `max_number`, every intermediate result at most `max_value`, operations drawn from `ops` (`+-*/`;
        multipliers and divisors are 2-4, division exact). `data_file` is accepted because every task takes it,
        but this task is generated, so giving one is an error."""
        if data_file:
            raise DataError("arithmetic generates its problems; it takes no data_file")
        if not 1 <= min_steps <= max_steps:
            raise DataError(f"arithmetic: need 1 <= min_steps <= max_steps, got {min_steps} and {max_steps}")
        if max_number < 2 or max_value < max_number:
            raise DataError(f"arithmetic: need 2 <= max_number <= max_value, got {max_number} and {max_value}")
        bad = set(ops) - set(PHRASES)
        if not ops or bad:
            raise DataError(f"arithmetic option `ops` must use characters of {''.join(PHRASES)!r}, got {ops!r}")
        if "+" not in ops and "*" not in ops:
            raise DataError("arithmetic option `ops` needs + or * (with only - and / numbers can only shrink)")
        self.min_steps, self.max_steps = min_steps, max_steps
        self.max_number, self.max_value = max_number, max_value
        self.ops, self.seed = ops, seed
        self.sizes = {"train": train_size, "test": test_size}

    # -- generation ------------------------------------------------------------------------------
    def problem(self, split: str, index: int) -> Problem:
        """Problem `index` of `split`: a pure function of (options, seed, split, index)."""
        rng = random.Random(f"arithmetic-{SPLIT_SEEDS[split]}-{self.seed}-{index}")
        name, pronoun, possessive = rng.choice(NAMES)
        item = rng.choice(ITEMS)
        value = rng.randint(2, self.max_number)
        sentences = [f"{name} has {value} {item}."]
        steps = []
        for k in range(rng.randint(self.min_steps, self.max_steps)):
            op, b = self._operation(rng, value)
            result = {"+": value + b, "-": value - b, "*": value * b, "/": value // b}[op]
            phrase = rng.choice(PHRASES[op]).format(P=pronoun.capitalize(), o="him" if pronoun == "he" else "her", b=b)
            sentences.append(phrase if k == 0 else "Then " + phrase[0].lower() + phrase[1:])
            steps.append(f"{value} {SYMBOL[op]} {b} = {result}")
            value = result
        sentences.append(f"How many {item} does {name} have now?")
        return Problem(" ".join(sentences), steps, value)

    def _operation(self, rng: random.Random, value: int) -> tuple[str, int]:
        """A random operation that keeps the result a whole number in [1, max_value]."""
        choices = []
        if "+" in self.ops and value < self.max_value:
            choices.append(("+", rng.randint(1, min(self.max_number, self.max_value - value))))
        if "-" in self.ops and value >= 2:
            choices.append(("-", rng.randint(1, min(self.max_number, value - 1))))
        if "*" in self.ops:
            ks = [k for k in (2, 3, 4) if value * k <= self.max_value]
            if ks:
                choices.append(("*", rng.choice(ks)))
        if "/" in self.ops:
            ks = [k for k in (2, 3, 4) if value % k == 0]
            if ks:
                choices.append(("/", rng.choice(ks)))
        if not choices:  # only when ops hold no operation that fits; "+" at the cap falls back to "-"
            return "-", rng.randint(1, value - 1)
        return rng.choice(choices)

    # -- the task protocol -----------------------------------------------------------------------
    def examples(self, split: str) -> Iterator[Example]:
        if split not in self.sizes:
            raise DataError(f"arithmetic has splits {', '.join(self.sizes)}, not {split!r}")
        held_out = {self.problem("test", i).question for i in range(self.sizes["test"])} if split == "train" else set()
        index = 0
        made = 0
        while made < self.sizes[split]:
            p = self.problem(split, index)
            index += 1
            if p.question in held_out:  # small problems can repeat across seeds; keep test unseen
                continue
            yield Example(id=f"arithmetic-{split}-{made}", prompt=math_prompt(p.question), reference=str(p.answer),
                          metadata={"steps": len(p.steps)}, target=p.target)
            made += 1


@hookimpl
def treerpo_register_tasks(register):
    register("arithmetic", ArithmeticTask)
