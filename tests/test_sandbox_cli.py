"""`treerpo sandbox build | check` through click's CliRunner."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from test_sandbox_support import get_backend
from treerpo_cli.main import cli

pytestmark = pytest.mark.sandbox


def test_check_reports_every_guarantee_as_holding_on_bwrap():
    get_backend("bwrap")
    r = CliRunner().invoke(cli, ["sandbox", "check", "--sandbox", "bwrap", "--timeout-s", "2"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("  ")]
    assert len(lines) >= 12 and all(line.strip().startswith("holds") for line in lines), r.output
    assert "no network" in r.output and "no false PASS" in r.output


def test_build_is_idempotent():
    get_backend("docker")
    first = CliRunner().invoke(cli, ["sandbox", "build"])  # builds only if the host's python3 changed
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, ["sandbox", "build"])
    assert again.exit_code == 0 and "already up to date" in again.output, again.output
