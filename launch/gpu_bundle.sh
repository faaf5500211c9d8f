#!/usr/bin/env bash
# Prepares what launch/gpu_check.sh needs on a bare GPU machine without network (PyTorch,
# transformers, sentencepiece and sacreBLEU there; no DeepSpeed): .gpu_bundle/wheels holds
# DeepSpeed 0.19.8 and the packages it needs that such a machine lacks, built for the GPU
# machine's Python; .gpu_bundle/data.tar.gz holds the prepared Bible data of
# cats_ds/configs/bible8_gpu.yaml (corpus, tokenizer, token arrays). Run it here, then carry
# .gpu_bundle with the check (about 30 MB).
#   launch/gpu_bundle.sh [PYTHON_VERSION]     (default 3.12, the H200 machine's)
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3.12}"
bundle=.gpu_bundle
bash launch/setup.sh
# the environment setup.sh just made, whatever PYTHON named (the interpreter it was made from)
unset PYTHON
source launch/python.sh
rm -rf "$bundle" && mkdir -p "$bundle/wheels"
# DeepSpeed builds as a pure-Python wheel (no ops compiled ahead: DS_BUILD_OPS is off); its
# setup.py imports torch, so it builds against this environment's torch, not an isolated one
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$bundle/wheels" deepspeed==0.19.8
platforms=()
for n in 17 27 28 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
  --implementation cp "${platforms[@]}" -d "$bundle/wheels" \
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
cache=$(mktemp -d)
CATS_DS_CACHE="$cache" DS_ACCELERATOR=cpu "$PYTHON" -c "
from cats_ds.config import load_config
from cats_ds.data.pipeline import prepare
prepare(load_config('cats_ds/configs/bible8_gpu.yaml').data)"
# posix format keeps the corpus files' nanosecond mtimes, which the token arrays' fingerprint reads
tar --format=posix -czf "$bundle/data.tar.gz" -C "$cache" prepared
rm -rf "$cache"
du -sh "$bundle"/wheels "$bundle"/data.tar.gz
