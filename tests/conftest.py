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

