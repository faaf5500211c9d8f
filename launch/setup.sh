#!/usr/bin/env bash
# Creates .venv in the repository with everything cats-ds needs; quick when it is already there.
# torch: the CUDA build from PyPI where an NVIDIA GPU is visible, the CPU build otherwise
# (from a local wheelhouse in pip's find-links when it has one, else PyTorch's CPU index).
# PYTHON: the interpreter .venv is made from (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet)
if .venv/bin/python -c "import deepspeed, transformers, sentencepiece, sacrebleu, datasets" 2>/dev/null \
   && cmp -s requirements.txt .venv/.requirements.installed; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "${pip[@]}" "torch==2.13.0"
elif ! "${pip[@]}" --no-index --no-deps "torch==2.13.0+cpu" 2>/dev/null; then
  "${pip[@]}" "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
fi
"${pip[@]}" -r requirements.txt
"${pip[@]}" --no-deps --no-build-isolation -e .
cp requirements.txt .venv/.requirements.installed
