"""`treerpo verify`: the boxed case table through the command and the pool, pathological input files, and a
third-party verifier (a real entry-point distribution) that sleeps forever getting TIMEOUT in a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from test_plugins import make_distribution  # tests/ is on sys.path under pytest's default import mode
from treerpo_cli.main import cli

CASES = Path(__file__).parent / "fixtures" / "boxed_cases.jsonl"

SLEEPY = """
    import time
    from treerpo_core.plugins import hookimpl
    from treerpo_core.types import VerifyResult

    class Sleepy:
        def verify(self, completion, reference, **metadata):
            if completion == "hang":
                while True:
                    time.sleep(1)
            return VerifyResult("PASS" if completion == reference else "FAIL", "compared")

    @hookimpl
    def treerpo_register_verifiers(register):
        register("sleepy", Sleepy)
"""


def run_cli(*args: str, env_extra: dict | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "treerpo_cli.main", *args], capture_output=True, env=env,
                          input=stdin, timeout=120)


def test_case_table_through_the_command():
    cases = [json.loads(line) for line in CASES.read_text().splitlines()]
    # a generous limit: this test is about verdicts, and the machine running it may be loaded
    result = CliRunner().invoke(cli, ["verify", "--verifier", "boxed", "--input", str(CASES),
                                      "--set", "verifier.timeout_s=30"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(cases)
    wrong = [(c["completion"], c["reference"], got) for c, got in zip(cases, lines) if got["verdict"] != c["expected"]]
    assert not wrong
    assert f"{len(cases)} checked" in result.stderr


def test_single_completion():
    result = CliRunner().invoke(cli, ["verify", "-v", "boxed", "-r", "\\frac{1}{2}", "so \\boxed{0.5}"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verdict"] == "PASS"


def test_local_sandbox_is_refused_without_unsafe():
    result = CliRunner().invoke(cli, ["verify", "-v", "boxed", "-r", "1", "\\boxed{1}", "--set", "verifier.sandbox=local"])
    assert result.exit_code == 2 and "--unsafe" in result.output


def test_third_party_verifier_that_hangs_gets_timeout_in_a_real_subprocess(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "tp-sleepy", "0.1", {"tp_sleepy": SLEEPY}, {"sleepy": "tp_sleepy"})
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(d) + "\n" for d in [
        {"completion": "hang", "reference": "a"}, {"completion": "a", "reference": "a"},
        {"completion": "hang", "reference": "a"}, {"completion": "b", "reference": "a"}]))
    start = time.monotonic()
    proc = run_cli("verify", "--verifier", "sleepy", "--input", str(items), "--set", "verifier.timeout_s=1",
                   env_extra={"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                              "TREERPO_DISABLE_PLUGIN_AUTOLOAD": "0"})
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr.decode()
    verdicts = [json.loads(line)["verdict"] for line in proc.stdout.decode().splitlines()]
    assert verdicts == ["TIMEOUT", "PASS", "TIMEOUT", "FAIL"]
    assert "TIMEOUT 2" in proc.stderr.decode()
    assert elapsed < 60  # start-up plus ~1 s per hanging check on 2 workers, never forever


def test_pathological_input_file_in_a_real_subprocess(tmp_path):
    lines = [
        json.dumps({"completion": "", "reference": "5"}).encode(),
        json.dumps({"completion": "step. " * 170_000 + "\\boxed{5}", "reference": "5"}).encode(),  # ~1 MB
        b'{"completion": "\\\\boxed{5} \xff\xfe broken bytes", "reference": "5"}',  # invalid UTF-8 in the file
        json.dumps({"completion": "\\boxed{" + "\\frac{1}{" * 30 + "2" + "}" * 30 + "}", "reference": "5"}).encode(),
        json.dumps({"completion": "\\boxed{9^{9^{9^{9}}}}", "reference": "5"}).encode(),
        json.dumps({"completion": "}{" * 1000 + "\\boxed{5", "reference": "5"}).encode(),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    proc = run_cli("verify", "--verifier", "boxed", "--input", str(path))  # the default 5 s limit
    assert proc.returncode == 0, proc.stderr.decode()
    verdicts = [json.loads(line)["verdict"] for line in proc.stdout.decode().splitlines()]
    reasons = proc.stdout.decode()
    assert verdicts == ["FAIL", "PASS", "PASS", "FAIL", "TIMEOUT", "FAIL"], reasons
