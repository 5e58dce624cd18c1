"""Shared fixtures. Entry-point autoload is off during tests (as in simonw/llm): tests that exercise
entry points turn it back on themselves, so a stray installed plugin can't change other tests' results."""

from __future__ import annotations

import os

import pytest

from treerpo_core import plugins

os.environ.setdefault(plugins.AUTOLOAD_ENV, "1")


@pytest.fixture(autouse=True)
def _fresh_registry():
    plugins.reset_registry()
    yield
    plugins.reset_registry()



@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped sandbox test is a failure: CI must prove containment on both backends, and a
    missing bwrap or docker engine would otherwise pass silently as a skip."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("sandbox") and os.environ.get("CI", "").lower() in ("true", "1"):
        report.outcome = "failed"
        report.longrepr = f"sandbox test skipped under CI=true (run .ci/setup_sandbox.sh): {report.longrepr}"
