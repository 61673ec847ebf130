#!/usr/bin/env bash
# Set up (if needed) and run every check: ruff, mypy, then the test suite (unit and real-browser).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export HF_HUB_OFFLINE=1
echo "== ruff"
.venv/bin/ruff check avatar tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
