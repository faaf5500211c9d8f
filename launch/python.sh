# Sourced by the launch scripts (from the repository root): the Python they run, in PYTHON.
# $PYTHON where set (a cluster's conda environment or module), else the repository's .venv
# (launch/setup.sh, which the README's two commands run, creates it), else python3 on PATH (an
# activated conda environment, an environment module). It needs cats-ds's dependencies
# (pip install the repository) and runs the cats_ds of the repository (the working directory).
# shellcheck shell=bash
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
