#!/usr/bin/env bash
# One prepared check of the GPU path (cats_ds/tools/gpu_check.py): exactness, throughput and MFU, a
# short Bible run with evaluation, export, translate and curvature, resume; one report.
#   launch/gpu_check.sh [--cpu] [--out DIR]     (--cpu: the dry run on the tiny preset)
# Python: $PYTHON, else .venv/bin/python, else python3 (launch/python.sh). Where DeepSpeed is
# missing (a bare GPU machine with torch, transformers, sentencepiece and sacreBLEU), the wheels that
# launch/gpu_bundle.sh put in .gpu_bundle/wheels ($GPU_BUNDLE/wheels) are installed into a
# temporary prefix, and its
# prepared Bible data (.gpu_bundle/data.tar.gz) becomes the data cache unless CATS_DS_CACHE is set.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle="${GPU_BUNDLE:-.gpu_bundle}"
source launch/python.sh
if ! "$PYTHON" -c "import deepspeed" 2>/dev/null; then
  if ! compgen -G "$bundle/wheels/*.whl" >/dev/null; then
    echo "$0: DeepSpeed is not importable by $PYTHON and $bundle/wheels has no wheels: run" \
         "launch/gpu_bundle.sh on a machine with PyPI access and carry $bundle here" >&2
    exit 2
  fi
  prefix=$(mktemp -d)
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$prefix" "$bundle"/wheels/*.whl
  export PYTHONPATH="$prefix${PYTHONPATH:+:$PYTHONPATH}" PATH="$prefix/bin:$PATH"
fi
if [ -z "${CATS_DS_CACHE:-}" ] && [ -f "$bundle/data.tar.gz" ]; then
  CATS_DS_CACHE=$(mktemp -d)
  tar -xzf "$bundle/data.tar.gz" -C "$CATS_DS_CACHE"
  export CATS_DS_CACHE
fi
case " $* " in *" --cpu "*) export DS_ACCELERATOR=cpu ;; esac
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" -m cats_ds.tools.gpu_check "$@"
