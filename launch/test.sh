#!/usr/bin/env bash
# The README's second command: set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export DS_ACCELERATOR=cpu PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -q "$@"
