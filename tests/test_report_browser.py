"""The report's tree viewer in a real browser: Debian's headless Chromium driven by playwright (installed by
.ci/setup_browser.sh; playwright never downloads a browser of its own here). The page is opened from a
file:// URL with every other request refused, a step and a prompt are chosen, nodes are clicked, and the
detail panel must show exactly that node's fields and root-to-node text. A screenshot of the result is
kept in tests/artifacts/ for a person to look at."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from test_report import INJECTION, TREE_A, write_flat_run, write_synthetic_run
from treerpo_core.report import build_report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: run .ci/setup_browser.sh")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} missing: run .ci/setup_browser.sh", allow_module_level=True)


@pytest.fixture(scope="module")
def browser_context():
    with tempfile.TemporaryDirectory(prefix="treerpo-chromium-") as profile, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000})
        yield context
        context.close()


@pytest.fixture(scope="module")
def synthetic_index(tmp_path_factory):
    return build_report(write_synthetic_run(tmp_path_factory.mktemp("browser") / "run"))


@pytest.fixture
def open_report(browser_context):
    """Open a report's index.html; returns (page, requests seen, page errors)."""
    pages = []

    def _open(index: Path):
        page = browser_context.new_page()
        pages.append(page)
        requests, errors = [], []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        def route(r):  # the page must need nothing but itself: refuse anything that is not this file
            requests.append(r.request.url)
            if r.request.url.startswith("file://") or r.request.url.startswith("data:"):
                r.continue_()
            else:
                r.abort()

        page.route("**/*", route)
        page.goto(index.resolve().as_uri())
        return page, requests, errors

    yield _open
    for p in pages:
        p.close()


def field(page, name: str) -> str:
    return page.locator(f'#node-fields [data-field="{name}"]').text_content()


def test_clicking_a_node_shows_its_fields_and_path(synthetic_index, open_report):
    page, requests, errors = open_report(synthetic_index)
    assert page.locator("#run-status").text_content() == "in progress (no summary.json yet)"
    assert page.locator("#plots img").count() == 10

    page.select_option("#step-select", label="step 2 · 2 prompts")
    page.select_option("#prompt-select", label="p0 · 3 leaves · 2 pass")
    assert page.locator("#tree-canvas .node").count() == len(TREE_A["nodes"])
    assert page.locator("#tree-canvas .node.leaf").count() == 3

    page.click('#tree-canvas .node[data-node-id="1"]')  # the interior node that split on entropy
    assert field(page, "kind") == "forced"
    assert field(page, "split_entropy") == "1.2345 nats"
    assert field(page, "reward") == "0.5"
    assert field(page, "advantage") == "-0.25"
    assert field(page, "verdict") == "— (not a leaf)"
    assert page.locator("#node-text").text_content() == "First, 3 + 4 ="

    page.click('#tree-canvas .node[data-node-id="4"]')  # a failing leaf below it
    assert field(page, "kind") == "entropy"
    assert field(page, "verdict") == "FAIL"
    assert field(page, "reward") == "0"
    assert field(page, "advantage") == "-0.5"
    assert field(page, "split_entropy") == "— (no split below)"
    assert page.locator("#node-text").text_content() == " 8, so \\boxed{8}"
    assert page.locator("#node-path").text_content() == "First, 3 + 4 = 8, so \\boxed{8}"
    assert page.locator("#tree-canvas .edge.on-path").count() == 2  # root->1, 1->4

    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#trees").evaluate("section => section.scrollIntoView()")
    page.screenshot(path=str(ARTIFACTS / "report_viewer.png"), full_page=False)
    page.locator("#trees").screenshot(path=str(ARTIFACTS / "report_viewer_trees.png"))
    assert errors == []
    assert all(u.startswith("file://") or u.startswith("data:") for u in requests), requests


def test_model_text_is_shown_as_text_not_markup(synthetic_index, open_report):
    page, _, errors = open_report(synthetic_index)
    page.select_option("#step-select", label="step 2 · 2 prompts")
    page.click('#tree-canvas .node[data-node-id="2"]')
    assert page.locator("#node-text").text_content() == INJECTION
    assert page.locator("#node-detail b, #node-detail img").count() == 0
    assert errors == []


def test_flat_mode_run_in_progress_is_browsable(tmp_path, open_report):
    page, _, errors = open_report(build_report(write_flat_run(tmp_path / "flat")))
    assert "flat (GRPO samples)" in page.locator("#summary").text_content()
    assert page.locator("#tree-canvas .node.leaf").count() == 4
    page.click('#tree-canvas .node[data-node-id="3"]')
    assert field(page, "kind") == "sample"
    assert field(page, "verdict") == "PASS"
    assert page.locator("#node-path").text_content() == "sample 3 \\boxed{3}"
    assert errors == []
