"""Tasks `humaneval` and `mbpp` (offline sources, example layout) and the delimiter rule `code`."""

from __future__ import annotations

from pathlib import Path

import pytest

from treerpo_core.data import DataError
from treerpo_core.plugins import create_delimiter, create_task
from treerpo_tasks.code import code_region, ends_logical_line

FIXTURES = Path(__file__).parent / "fixtures"


def test_humaneval_reads_the_packaged_file_offline():
    examples = list(create_task("humaneval").examples("test"))
    assert len(examples) == 164
    first = examples[0]
    assert first.id == "HumanEval/0"
    assert first.metadata["entry_point"] == "has_close_elements"
    assert first.metadata["prompt"].startswith("from typing import List")
    assert "def check(candidate)" in first.reference
    assert first.prompt[-1]["role"] == "user" and "```python" in first.prompt[-1]["content"]
    assert first.target.startswith("```python\n") and first.target.rstrip().endswith("```")


def test_humaneval_has_only_a_test_split():
    with pytest.raises(DataError, match="only the split 'test'"):
        list(create_task("humaneval").examples("train"))


def test_humaneval_data_file_in_hub_layout(tmp_path):
    f = tmp_path / "he.jsonl"
    f.write_text('{"task_id": "X/1", "prompt": "def one():\\n", "canonical_solution": "    return 1\\n", '
                 '"test": "def check(c):\\n    assert c() == 1\\n", "entry_point": "one"}\n')
    (ex,) = create_task("humaneval", {"data_file": str(f)}).examples("test")
    assert ex.id == "X/1" and ex.metadata == {"entry_point": "one", "prompt": "def one():\n"}


def test_mbpp_fixture_in_hub_layout():
    examples = list(create_task("mbpp", {"data_file": str(FIXTURES / "mbpp_sample.jsonl")}).examples("test"))
    assert [e.id for e in examples] == ["mbpp/901", "mbpp/902", "mbpp/903"]
    area = examples[2]
    assert area.metadata["setup"] == "import math\nPI = math.pi"
    assert area.reference.splitlines()[1] == "assert circle_area(2) == 12.57"
    assert "assert circle_area(2) == 12.57" in area.prompt[-1]["content"]  # MBPP shows the tests in the prompt


def test_mbpp_sanitized_layout_uses_prompt_and_test_imports(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"source_file": "x", "task_id": 7, "prompt": "Add two numbers.", "code": "def add(a, b): return a + b", '
                 '"test_imports": ["import math"], "test_list": ["assert add(1, 2) == 3"]}\n')
    (ex,) = create_task("mbpp", {"data_file": str(f), "config": "sanitized"}).examples("test")
    assert ex.metadata["setup"] == "import math" and ex.reference == "assert add(1, 2) == 3\n"


def test_mbpp_row_without_tests_names_the_row(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"task_id": 1, "text": "t", "code": "x"}\n')
    with pytest.raises(DataError, match="row 1.*test_list"):
        list(create_task("mbpp", {"data_file": str(f)}).examples("test"))


def test_code_tasks_default_to_unit_tests_and_code_rule():
    for name in ("humaneval", "mbpp"):
        task = create_task(name)
        assert (task.default_verifier, task.default_delimiter) == ("unit-tests", "code")
        assert set(task.tree_defaults) <= {"l_min", "s_min", "h_th", "max_depth", "max_leaves"}


# -- delimiter rule `code` ---------------------------------------------------------------------------------
@pytest.mark.parametrize("code, complete", [
    ("x = 1\n", True),
    ("def f(a,\n", False),  # open bracket
    ("d = {'a': 1,\n", False),
    ("d = {'a': 1,\n     'b': 2}\n", True),
    ("s = '''doc\n", False),  # inside a triple-quoted string
    ("s = '''doc\nmore'''\n", True),
    ("x = 1 + \\\n", False),  # backslash continuation
    ("s = 'a(b'\n", True),  # a bracket inside a string does not count
    ("y = f(1)  # note (\n", True),  # nor inside a comment
    ("s = \"\\\"(\"\n", True),  # escaped quote
])
def test_ends_logical_line(code, complete):
    assert ends_logical_line(code) is complete


def test_code_region_follows_fences():
    assert code_region("Sure:\n```python\ndef f(\n") == "def f(\n"
    assert code_region("```python\nx = 1\n```\nThat is all.\n") is None  # prose after the block
    assert code_region("x = (1,\n") == "x = (1,\n"  # no fences: raw code


@pytest.fixture(scope="module")
def tokenizer():
    from treerpo_core.models import load_model

    return load_model("tiny-random")[1]


def test_code_vocab_mask_marks_tokens_ending_in_newline(tokenizer):
    rule = create_delimiter("code")
    mask = rule.vocab_mask(tokenizer)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert len(newline) == 1 and mask[newline[0]]
    assert not mask[tokenizer.encode("x", add_special_tokens=False)[0]]
    for i in mask.nonzero().flatten().tolist()[:200]:
        assert tokenizer.decode([i]).endswith("\n")


def test_code_allows_split_only_after_complete_lines(tokenizer):
    rule = create_delimiter("code")
    rule.vocab_mask(tokenizer)
    nxt = tokenizer.encode("x", add_special_tokens=False)[0]
    ids = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    assert rule.allows_split(ids("```python\ndef f(a, b):\n"), nxt)
    assert not rule.allows_split(ids("```python\nprint(f(1,\n"), nxt)
    assert not rule.allows_split(ids("```python\ns = '''\n"), nxt)
    assert rule.allows_split(ids("Let me think.\n"), nxt)
