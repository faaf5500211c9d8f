#!/usr/bin/env bash
# Multi-node training through the deepspeed launcher and a hostfile.
#   launch/multinode.sh HOSTFILE CONFIG.yaml [key.sub=value ...]
# HOSTFILE has one line 'HOST slots=N' per node (N: processes, one per GPU). Run it on the first
# host; the launcher reaches the others by password-less ssh (pdsh) and runs the same checkout
# path there, so the repository and its Python ($PYTHON, launch/python.sh) must be at the same
# path on every node (shared disk).
# The hostfile is checked first (format, duplicates, name resolution, ssh): see cats_ds/tools/launchcheck.py.
# MASTER_PORT (default 29500) is the rendezvous port on the first host.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
if [ $# -lt 2 ]; then echo "usage: $0 HOSTFILE CONFIG.yaml [key.sub=value ...]" >&2; exit 2; fi
hostfile="$1"; config="$2"; shift 2
[ -f "$config" ] || { echo "$0: config file $config not found" >&2; exit 2; }
"$PYTHON" -m cats_ds.tools.launchcheck hostfile "$hostfile"
exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$hostfile" --master_port "${MASTER_PORT:-29500}" \
  --module cats_ds.train --config "$config" "$@"
