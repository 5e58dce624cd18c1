"""The CLI skeleton, and the third-party example plugin installed as a real distribution with pip."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from treerpo_cli.main import cli
from treerpo_core import __version__, plugins

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "treerpo-example-plugin"


@pytest.fixture(scope="module")
def example_installed():
    """pip-install the example plugin (as a user would) unless .ci/run already did."""
    try:
        importlib.metadata.distribution("treerpo-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(EXAMPLE)],
                       check=True)
    return importlib.metadata.distribution("treerpo-example-plugin")


def autoload_env(on: bool) -> dict:
    return {**os.environ, plugins.AUTOLOAD_ENV: "0" if on else "1"}


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("plugins", "verify"):
        assert command in result.output
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_plugins_json_lists_builtins_with_distribution():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and all(set(r) == {"kind", "name", "distribution", "version"} for r in rows)
    assert {"kind": "model", "name": "tiny-random", "distribution": "treerpo", "version": __version__} in rows
    assert {r["kind"] for r in rows} <= {"verifier", "task", "delimiter", "model"}


def test_installed_plugin_is_listed_by_a_real_subprocess(example_installed):
    out = subprocess.run(["treerpo", "plugins", "--json"], capture_output=True, text=True, env=autoload_env(True),
                         check=True).stdout
    rows = json.loads(out)
    assert {"kind": "verifier", "name": "exact-match", "distribution": "treerpo-example-plugin",
            "version": example_installed.version} in rows
    assert any(r["kind"] == "task" and r["name"] == "echo" for r in rows)


def test_autoload_switch_hides_the_installed_plugin(example_installed):
    out = subprocess.run(["treerpo", "plugins", "--json"], capture_output=True, text=True, env=autoload_env(False),
                         check=True).stdout
    assert not any(r["distribution"] == "treerpo-example-plugin" for r in json.loads(out))


def test_verify_uses_the_installed_plugin(example_installed):
    env = autoload_env(True)
    run = lambda *args: subprocess.run(["treerpo", "verify", "--verifier", "exact-match", *args],
                                       capture_output=True, text=True, env=env, timeout=120)
    ok = run("--reference", "hello", "some text\nhello")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verdict"] == "PASS"
    bad = run("--reference", "hello", "goodbye", "--set", "verifier.options.case_sensitive=false")
    assert json.loads(bad.stdout)["verdict"] == "FAIL" and "expected 'hello'" in json.loads(bad.stdout)["reason"]
    wrong = run("--reference", "hello", "x", "--set", "verifier.options.strict=true")
    assert wrong.returncode == 2 and "does not accept option 'strict'" in wrong.stderr


def test_verify_input_file_answers_in_order_and_names_bad_lines(example_installed, tmp_path):
    f = tmp_path / "items.jsonl"
    items = [{"completion": w, "reference": "b"} for w in ["a", "b", "c", "b"]]
    f.write_text("".join(json.dumps(i) + "\n" for i in items))
    env = autoload_env(True)
    res = subprocess.run(["treerpo", "verify", "--verifier", "exact-match", "--input", str(f)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["verdict"] for line in res.stdout.splitlines()] == ["FAIL", "PASS", "FAIL", "PASS"]
    assert "PASS 2" in res.stderr and "FAIL 2" in res.stderr
    f.write_text(json.dumps(items[0]) + "\n{not json\n")
    res = subprocess.run(["treerpo", "verify", "--verifier", "exact-match", "--input", str(f)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "line 2" in res.stderr


def test_unknown_verifier_is_a_clear_error():
    result = CliRunner().invoke(cli, ["verify", "--verifier", "nope", "--reference", "1", "1"])
    assert result.exit_code == 2 and "unknown verifier 'nope'" in result.output


def test_import_verifiers_outside_the_checkout_finds_nothing_of_ours(tmp_path):
    code = ("import importlib.util as u\n"
            "s = u.find_spec('verifiers'); t = u.find_spec('tasks')\n"
            "ours = [x.origin for x in (s, t) if x and x.origin and 'treerpo' in open(x.origin).read()]\n"
            "print(ours)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    out = subprocess.run([sys.executable, "-c", "import treerpo_verifiers, treerpo_tasks, treerpo_cli; print('ok')"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ok"
