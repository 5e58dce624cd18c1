"""An example treerpo plugin: one verifier and one task, registered through the `treerpo` entry points."""

from __future__ import annotations

from treerpo_core.plugins import hookimpl
from treerpo_core.types import Example, Verdict, VerifyResult


class ExactMatch:
    """PASS when the completion's last non-empty line equals the reference."""

    def __init__(self, case_sensitive: bool = True):
        self.case_sensitive = case_sensitive

    def extract_answer(self, completion: str) -> str | None:
        lines = [line.strip() for line in completion.splitlines() if line.strip()]
        return lines[-1] if lines else None

    def same_answer(self, a: str, b: str) -> bool:
        return a == b if self.case_sensitive else a.lower() == b.lower()

    def verify(self, completion: str, reference, **metadata) -> VerifyResult:
        answer = self.extract_answer(completion)
        if answer is None:
            return VerifyResult(Verdict.FAIL, "empty completion")
        if self.same_answer(answer, str(reference).strip()):
            return VerifyResult(Verdict.PASS)
        return VerifyResult(Verdict.FAIL, f"expected {reference!r}, got {answer!r}")


class EchoTask:
    default_verifier = "exact-match"
    default_delimiter = "text"
    tree_defaults = {"l_min": 4, "s_min": 32}
    WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "quartz", "violet"]

    def __init__(self, data_file: str | None = None):
        self.data_file = data_file

    def examples(self, split: str):
        for i, word in enumerate(self.WORDS):
            yield Example(id=f"echo-{split}-{i}", prompt=[{"role": "user", "content": f"Repeat this word: {word}"}],
                          reference=word, target=word)


@hookimpl
def treerpo_register_verifiers(register):
    register("exact-match", ExactMatch)


@hookimpl
def treerpo_register_tasks(register):
    register("echo", EchoTask)
