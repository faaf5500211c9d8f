#!/usr/bin/env bash
# The continue-from-export comparison of docs/pretrained.md: a cats-ds export fine-tuned on a
# corpus of other Bible languages against the own-corpus recipe from scratch, in the same time
# (both at once, one thread each, train.max_minutes MINUTES), then one table.
#   bash launch/continue_from_export.sh EXPORT_DIR BASE_DATA_DIR OUT_DIR [MINUTES]
# EXPORT_DIR: the base's export (runs/bible8-related-x2en/export after the quickstart).
# BASE_DATA_DIR: the corpus the base trained on, in the local format (the quickstart's is
#   $CATS_DS_CACHE/prepared/<key>/corpus, the directory whose manifest names bible8-related):
#   the fine-tuning corpus's test pairs are checked against its train files first.
# The corpus: fr (seen by the CPU default) and pt (unseen) with 5,800 train pairs each, ro and
# vi (unseen) with 600; pt and ro are restricted Bibles, so the corpus stays in OUT_DIR.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,11p' "$0"; exit 2; }
EXPORT=$(realpath "$1") BASE_DATA=$(realpath "$2") OUT=$(realpath -m "$3") MINUTES=${4:-25}
cd "$(dirname "$0")/.."
source launch/python.sh
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
CORPUS=$OUT/corpus
[ -d "$CORPUS" ] || "$PYTHON" launch/own_corpus_bible.py "$CORPUS" --group fr,pt=5800 --group ro,vi=600 --allow-restricted
"$PYTHON" -m cats_ds.tools.overlap --train "$BASE_DATA" --test "$CORPUS" --strict | tee "$OUT/overlap.md"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT   # a failed run stops the other
recipe=(--config cats_ds/configs/own_corpus_cpu.yaml "data.local_dir=$CORPUS" 'data.low_resource=[ro-en, vi-en]'
        train.threads=1 "train.max_minutes=$MINUTES" train.max_steps=1000000)
"$PYTHON" -m cats_ds.train "${recipe[@]}" "model.pretrained=$EXPORT" "train.run_dir=$OUT/from-export" \
  > "$OUT/from-export.log" 2>&1 &
from_export=$!
"$PYTHON" -m cats_ds.train "${recipe[@]}" "train.run_dir=$OUT/from-scratch" > "$OUT/from-scratch.log" 2>&1 &
from_scratch=$!
wait $from_export || { echo "from-export failed: $OUT/from-export.log" >&2; exit 1; }
wait $from_scratch || { echo "from-scratch failed: $OUT/from-scratch.log" >&2; exit 1; }
"$PYTHON" -m cats_ds.tools.compare "$OUT/from-export" "$OUT/from-scratch" \
  --label "from the CPU default's export" --label "from scratch" --out "$OUT/table.md"
