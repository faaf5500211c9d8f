#!/usr/bin/env bash
# Single-node training through the deepspeed launcher.
#   launch/train.sh [-n PROCESSES] CONFIG.yaml [key.sub=value ...]
# On a machine without an NVIDIA GPU it runs PROCESSES CPU processes (DS_ACCELERATOR=cpu, gloo;
# default 2); with GPUs, one process per GPU unless -n says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
procs=""
if [ "${1:-}" = "-n" ]; then procs="$2"; shift 2; fi
if [ $# -lt 1 ]; then echo "usage: $0 [-n PROCESSES] CONFIG.yaml [key.sub=value ...]" >&2; exit 2; fi
config="$1"; shift
[ -f "$config" ] || { echo "$0: config file $config not found" >&2; exit 2; }
if has_nvidia_gpu; then
  procs="${procs:-$(nvidia-smi -L | wc -l)}"
else
  procs="${procs:-2}"
fi
exec .venv/bin/deepspeed --num_accelerators "$procs" --master_port "${MASTER_PORT:-29500}" \
  --module cats_ds.train --config "$config" "$@"
