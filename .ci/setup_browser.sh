#!/usr/bin/env bash
# Headless-browser prerequisites for tests/test_report_browser.py, called by .ci/run.
# Idempotent: installs Debian's chromium only when /usr/bin/chromium is missing, and the playwright
# Python package only (never `playwright install`: the tests drive /usr/bin/chromium, so no browser
# download from the network is needed or wanted).
set -euo pipefail

if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium
fi

if ! python -c "import playwright.sync_api" >/dev/null 2>&1; then
    python -m pip install -q "playwright>=1.40"
fi

/usr/bin/chromium --version
