#!/usr/bin/env bash
# Single-node training through the deepspeed launcher.
#   launch/train.sh [-n PROCESSES] CONFIG.yaml [key.sub=value ...]
# On a machine without an NVIDIA GPU it runs PROCESSES CPU processes (DS_ACCELERATOR=cpu, gloo;
# default 2); with GPUs, one process per GPU unless -n says otherwise.
# Stopping: SIGTERM, SIGINT or SIGHUP to this script (SIGUSR1 likewise) is passed to every rank as
# SIGTERM (SIGUSR1), which makes them save a checkpoint at the next step boundary and exit; the
# script returns when they have, with status 0. Should the deepspeed launcher itself be stopped
# by a signal, its ranks get SIGTERM in the same way and the script returns, once they have saved
# and exited, the launcher's status (143 for SIGTERM).
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
# job control: the launcher and everything it starts get a process group of their own (its id is
# the launcher's pid), where the ranks can be found even after the launcher is gone
set -m
"$PYTHON" -m deepspeed.launcher.runner --num_accelerators "$procs" --master_port "${MASTER_PORT:-29500}" \
  --module cats_ds.train --config "$config" "$@" &
launcher=$!

# the ranks: the group's processes but the deepspeed launcher and its launch.py, which would turn
# a signal into SIGKILLs after 30 s, however long the checkpoint takes
ranks() {
  ps -eo pid=,pgid=,args= | awk -v group="$launcher" '$2 == group && $1 != group && !/deepspeed\.launcher\.launch/ { print $1 }'
}
# shellcheck disable=SC2329  # called by the traps below
stop_ranks() {
  echo "$0: $1: asking every rank to checkpoint and exit" >&2
  ranks | xargs -r kill "-$1" 2>/dev/null || true
}
trap 'stop_ranks TERM' TERM INT HUP
trap 'stop_ranks USR1' USR1

# a trapped signal ends wait early: wait again until the launcher has exited
status=0
wait "$launcher" || status=$?
while kill -0 "$launcher" 2>/dev/null; do status=0; wait "$launcher" || status=$?; done
if [ -n "$(ranks)" ]; then
  echo "$0: the deepspeed launcher ended (status $status) while its ranks still run" >&2
  stop_ranks TERM
  while [ -n "$(ranks)" ]; do sleep 1; done
fi
exit "$status"
