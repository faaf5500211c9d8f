#!/usr/bin/env bash
# The README's first command: set up, prepare the embedded Bible corpus, train the default
# (bible8-related, X->en, CATS on, 2 processes), print the per-language BLEU/chrF++ table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
# the environment setup.sh just made, whatever PYTHON named (the interpreter it was made from)
env -u PYTHON bash launch/train.sh cats_ds/configs/bible8_cpu.yaml "$@"
