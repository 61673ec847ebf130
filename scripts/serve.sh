#!/usr/bin/env bash
# Set up (if needed) and start the server on its embedded defaults. Extra arguments go to `avatar serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/avatar serve "$@"
