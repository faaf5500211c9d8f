#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/test_slurm.py (root, Debian or Ubuntu):
#   bash launch/slurm/local_cluster.sh start   # apt-get install slurm-wlm and munge if missing, write the
#                                              # munge key and slurm.conf, start munged, slurmctld, slurmd,
#                                              # wait until the node is idle
#   bash launch/slurm/local_cluster.sh stop    # stop the daemons that start started
# A slurm.conf not written by this script (a real cluster's) is left alone and nothing is started.
set -euo pipefail
state=/run/cats-ds-slurm        # pid files of the Slurm daemons this script started
munged_pid=/run/munge/munged.pid   # munged runs as munge: its pid file goes in its own directory
conf=/etc/slurm/slurm.conf
marker="# written by cats-ds launch/slurm/local_cluster.sh"

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  echo "local_cluster: installing slurm-wlm and munge with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_munge_key() {
  mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || head -c 1024 /dev/urandom > /etc/munge/munge.key
  chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge
  chmod 400 /etc/munge/munge.key
}

write_slurm_conf() {
  local host memory
  host=$(hostname -s)
  # RealMemory above what slurmd measures drains the node: stay under the total
  memory=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$state"
  cat > "$conf" <<CONF
$marker
ClusterName=cats-ds-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName=$host CPUs=$(nproc) RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  if [ -f "$conf" ] && ! grep -qxF "$marker" "$conf"; then
    echo "local_cluster: $conf belongs to another Slurm set-up; leaving it alone" >&2
    return 0
  fi
  install_packages
  write_munge_key
  write_slurm_conf
  running "$munged_pid" || runuser -u munge -- /usr/sbin/munged --force
  running "$state/slurmctld.pid" || /usr/sbin/slurmctld
  running "$state/slurmd.pid" || /usr/sbin/slurmd
  for _ in $(seq 60); do
    if sinfo -h -N -t idle -o %N 2>/dev/null | grep -q .; then
      echo "local_cluster: node $(hostname -s) idle" >&2
      return 0
    fi
    sleep 1
  done
  echo "local_cluster: no idle node after 60 s; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
  sinfo -N -l >&2 || true
  return 1
}

stop() {
  local pid_file
  for pid_file in "$state/slurmd.pid" "$state/slurmctld.pid" "$munged_pid"; do
    if running "$pid_file"; then kill "$(cat "$pid_file")"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
