"""Math tasks: gsm8k (on the shared offline copy), numina-math (on a fixture in the hub layout) and the
procedural arithmetic task. Each target must pass the `boxed` verifier against its own reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treerpo_core.data import DataError, task_examples
from treerpo_core.plugins import create_task
from treerpo_core.types import Verdict
from treerpo_tasks.math_common import INSTRUCTION, SkippedRowsWarning
from treerpo_verifiers.boxed import BoxedVerifier

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "{split}.jsonl"
NUMINA = str(Path(__file__).parent / "fixtures" / "numina_sample.jsonl")


@pytest.fixture(scope="module")
def verifier():
    return BoxedVerifier()


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# -- gsm8k -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gsm8k_test():
    if not Path(str(GSM8K).format(split="test")).is_file():
        pytest.skip("shared GSM8K copy not present")
    return list(create_task("gsm8k", {"data_file": str(GSM8K)}).examples("test"))


def test_gsm8k_first_test_row(gsm8k_test):
    ex = gsm8k_test[0]
    assert ex.id == "gsm8k-test-0"
    assert ex.reference == "18"
    assert ex.prompt == [{"role": "system", "content": INSTRUCTION},
                         {"role": "user", "content": ex.prompt[1]["content"]}]
    assert ex.prompt[1]["content"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert ex.target == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
                         "She makes 9 * 2 = $18 every day at the farmer\u2019s market.\n\\boxed{18}")


def test_gsm8k_loads_every_test_row_with_no_calculator_notes(gsm8k_test):
    assert len(gsm8k_test) == 1319
    assert not any("<<" in ex.target or "####" in ex.target for ex in gsm8k_test)


def test_gsm8k_targets_pass_their_own_reference(gsm8k_test, verifier):
    for ex in gsm8k_test[:40]:
        assert verifier.verify(ex.target, ex.reference).verdict is Verdict.PASS, ex.id


def test_gsm8k_reference_drops_thousands_commas(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "a <<2*3=6>>6\n#### 1,250"}])
    (ex,) = create_task("gsm8k", {"data_file": path}).examples("train")
    assert ex.reference == "1250" and ex.target == "a 6\n\\boxed{1250}"


def test_gsm8k_missing_field_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "x\n#### 1"}, {"question": "q2"}])
    with pytest.raises(DataError, match=r"row 1: missing field\(s\) answer"):
        list(create_task("gsm8k", {"data_file": path}).examples("train"))


def test_gsm8k_answer_without_final_line_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no final line"}])
    with pytest.raises(DataError, match="row 0: answer has no '####'"):
        list(create_task("gsm8k", {"data_file": path}).examples("train"))


def test_gsm8k_unknown_split():
    with pytest.raises(DataError, match="splits train, test"):
        list(create_task("gsm8k").examples("validation"))


def test_offset_limit_give_disjoint_subsets(gsm8k_test):
    task = create_task("gsm8k", {"data_file": str(GSM8K)})
    sft = task_examples(task, "test", offset=0, limit=100, shuffle_seed=0)
    rl = task_examples(task, "test", offset=100, limit=100, shuffle_seed=0)
    assert len(sft) == len(rl) == 100
    assert not {e.id for e in sft} & {e.id for e in rl}


# -- numina-math -----------------------------------------------------------------------------------

def numina_examples(**options):
    with pytest.warns(SkippedRowsWarning) as record:
        examples = list(create_task("numina-math", {"data_file": NUMINA, **options}).examples("train"))
    return examples, [str(w.message) for w in record]


def test_numina_reference_is_last_box_of_solution():
    examples, _ = numina_examples()
    refs = {e.id: e.reference for e in examples}
    assert refs["numina-train-0"] == "\\frac{5}{6}"
    assert refs["numina-train-3"] == "\\{-2, 2\\}"  # the solution's first box is superseded
    assert refs["numina-train-1"] == "12"


def test_numina_target_is_the_solution():
    examples, _ = numina_examples()
    row0 = json.loads(Path(NUMINA).read_text().splitlines()[0])
    assert examples[0].target == row0["solution"] and examples[0].prompt[1]["content"] == row0["problem"]


def test_numina_skips_and_counts_rows_without_a_box():
    examples, messages = numina_examples()
    assert "numina-train-2" not in {e.id for e in examples}  # a proof
    assert "numina-train-8" not in {e.id for e in examples}  # an empty box
    assert any("skipped 2 row(s) without a boxed answer" in m and "row 2" in m and "row 8" in m for m in messages)


def test_numina_skips_unparseable_reference_with_its_row_index():
    examples, messages = numina_examples()
    assert "numina-train-9" not in {e.id for e in examples}
    (msg,) = [m for m in messages if "cannot parse" in m]
    assert "skipped 1 row(s)" in msg and "row 9" in msg
    assert len(examples) == 7


def test_numina_source_filter():
    examples = list(create_task("numina-math", {"data_file": NUMINA, "source": "synthetic_math"}).examples("train"))
    assert [e.id for e in examples] == ["numina-train-0", "numina-train-5"]
    both = list(create_task("numina-math", {"data_file": NUMINA, "source": ["gsm8k", "orca_math"]}).examples("train"))
    assert [e.metadata["source"] for e in both] == ["gsm8k", "orca_math"]


def test_numina_unknown_source_lists_those_present():
    with pytest.raises(DataError, match="sources present: .*synthetic_math"):
        list(create_task("numina-math", {"data_file": NUMINA, "source": "nope"}).examples("train"))


def test_numina_targets_pass_their_own_reference(verifier):
    examples, _ = numina_examples()
    for ex in examples:
        assert verifier.verify(ex.target, ex.reference).verdict is Verdict.PASS, ex.id


def test_numina_missing_field_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"source": "x", "problem": "p"}])
    with pytest.raises(DataError, match=r"row 0: missing field\(s\) solution"):
        list(create_task("numina-math", {"data_file": path}).examples("train"))


# -- arithmetic ------------------------------------------------------------------------------------

def test_arithmetic_is_deterministic_and_splits_differ():
    a = list(create_task("arithmetic").examples("test"))
    b = list(create_task("arithmetic").examples("test"))
    assert a == b and len(a) == 300 and a[17].id == "arithmetic-test-17"
    train = list(create_task("arithmetic", {"train_size": 3000}).examples("train"))
    assert len(train) == 3000
    assert not {e.prompt[1]["content"] for e in train} & {e.prompt[1]["content"] for e in a}


def test_arithmetic_target_lines_compute_the_answer(verifier):
    for ex in create_task("arithmetic").examples("test"):
        *steps, last = ex.target.split("\n")
        assert last == f"\\boxed{{{ex.reference}}}"
        value = None
        for line in steps:
            lhs, rhs = line.split(" = ")
            a, op, b = lhs.split(" ")
            if value is not None:
                assert int(a) == value  # each step continues from the previous result
            value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "/": int(a) // int(b)}[op]
            assert value == int(rhs) and value >= 1
        assert value == int(ex.reference)
        assert len(steps) == ex.metadata["steps"]


def test_arithmetic_test_problem_is_pinned():
    # the test split is a fixed benchmark: problem 0 must not change between versions (checked by hand)
    p = create_task("arithmetic").problem("test", 0)
    assert p.question == ("Emma has 5 cookies. She loses 2. Then she ends up with 2 times as many as before. "
                          "Then she ends up with 4 times as many as before. How many cookies does Emma have now?")
    assert p.target == "5 - 2 = 3\n3 * 2 = 6\n6 * 4 = 24\n\\boxed{24}"
    assert p.answer == 24


def test_arithmetic_difficulty_knobs():
    task = create_task("arithmetic", {"min_steps": 4, "max_steps": 4, "max_number": 9, "max_value": 50, "ops": "+-"})
    for i in range(200):
        p = task.problem("train", i)
        assert len(p.steps) == 4
        assert all(" * " not in s and " / " not in s for s in p.steps)
        assert all(1 <= int(s.split(" = ")[1]) <= 50 for s in p.steps)
        assert all(int(s.split(" ")[2]) <= 9 for s in p.steps)


def test_arithmetic_default_difficulty_is_one_to_three_steps():
    steps = {ex.metadata["steps"] for ex in create_task("arithmetic").examples("test")}
    assert steps == {1, 2, 3}


def test_arithmetic_bad_options_are_errors():
    with pytest.raises(DataError, match="min_steps"):
        create_task("arithmetic", {"min_steps": 3, "max_steps": 2})
    with pytest.raises(DataError, match="ops"):
        create_task("arithmetic", {"ops": "+%"})
    with pytest.raises(DataError, match="data_file"):
        create_task("arithmetic", {"data_file": "x.jsonl"})


def test_arithmetic_tree_defaults_are_tree_config_keys():
    from treerpo_core.config import Config

    task = create_task("arithmetic")
    cfg = Config()
    cfg.apply_defaults("tree", task.tree_defaults, source="arithmetic")
    assert cfg.tree.l_min < 40 <= cfg.tree.s_min  # a ~40-token solution can split, and is not "too long"
    assert (task.default_verifier, task.default_delimiter) == ("boxed", "equation")


def test_arithmetic_targets_pass_the_verifier(verifier):
    for ex in list(create_task("arithmetic").examples("test"))[:50]:
        assert verifier.verify(ex.target, ex.reference).verdict is Verdict.PASS
