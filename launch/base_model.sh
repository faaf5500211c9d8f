#!/usr/bin/env bash
# The base model (docs/results/base_cpu/): writes its corpus once (16 Bible languages into English,
# restricted Bibles included: local use only), then trains or resumes it in one process with one
# thread, so that it runs for hours beside other work. Rerun the same command to resume.
#   bash launch/base_model.sh [CORPUS_DIR [RUN_DIR]] [key.sub=value ...]
# Defaults: runs/base-cpu-corpus and runs/base-cpu; the export lands in RUN_DIR/export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source launch/python.sh
corpus="${1:-runs/base-cpu-corpus}"; run_dir="${2:-runs/base-cpu}"; shift $(( $# < 2 ? $# : 2 ))
if [ ! -f "$corpus/train.uk-en.tsv" ]; then
  rm -rf "$corpus.partial"
  "$PYTHON" launch/own_corpus_bible.py "$corpus.partial" --base >/dev/null
  mv "$corpus.partial" "$corpus"
fi
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" PYTHONUNBUFFERED=1
exec "$PYTHON" -m cats_ds.train --config cats_ds/configs/base_cpu.yaml data.local_dir="$corpus" \
  train.run_dir="$run_dir" "$@"
