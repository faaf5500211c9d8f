#!/usr/bin/env bash
# The README's second command: set up, then run the whole test suite.
# As root with CI=true or CATS_DS_SLURM=1 it first brings up a one-node Slurm cluster on this
# machine for tests/test_slurm.py (which skips, saying why, where there is none) and stops it after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export DS_ACCELERATOR=cpu PYTHONUNBUFFERED=1
if [ "$(id -u)" = 0 ] && { [ "${CI:-}" = true ] || [ "${CATS_DS_SLURM:-}" = 1 ]; }; then
  trap 'bash launch/slurm/local_cluster.sh stop' EXIT
  bash launch/slurm/local_cluster.sh start || echo "WARNING: no local Slurm cluster; tests/test_slurm.py will skip" >&2
fi
# the environment setup.sh just made, whatever PYTHON named (the interpreter it was made from)
unset PYTHON
source launch/python.sh
"$PYTHON" -m pytest -q "$@"
