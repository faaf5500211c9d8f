#!/usr/bin/env bash
# The body of train.sbatch and array.sbatch: one training run on the job's allocation.
#   bash launch/slurm/job.sh CONFIG.yaml [key.sub=value ...]   (in a Slurm batch job, repository root)
# srun starts one process per rank; cats_ds.tools.launchcheck turns each task's SLURM_* variables into
# RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_SIZE, MASTER_ADDR and MASTER_PORT for torch.distributed.
# The run directory is runs/slurm-JOBID (runs/slurm-ARRAYJOBID_TASKID for an array task) unless
# the overrides set train.run_dir; a requeued job keeps its id, so it resumes from the last
# checkpoint there. USR1 (sbatch --signal=B:USR1@SECONDS, sent before the time limit) is forwarded
# to the ranks, which checkpoint and exit, and the job requeues itself.
set -euo pipefail
source launch/env.sh
if [ $# -lt 1 ]; then echo "usage: sbatch launch/slurm/train.sbatch CONFIG.yaml [key.sub=value ...]" >&2; exit 2; fi
config="$1"; shift
[ -f "$config" ] || { echo "$0: config file $config not found in $PWD" >&2; exit 2; }
run_dir=$("$PYTHON" -m cats_ds.tools.launchcheck slurm-job)
echo "job $SLURM_JOB_ID on $SLURM_JOB_NODELIST (restart ${SLURM_RESTART_COUNT:-0}): run directory $run_dir"

requeue=false
# shellcheck disable=SC2329  # called by the trap below
forward_usr1() {
  requeue=true
  echo "USR1: asking the ranks to checkpoint and exit" >&2
  kill -USR1 "$srun_pid" 2>/dev/null || true   # srun forwards it to every task
}
trap forward_usr1 USR1
# train.run_dir before the user's overrides: the last value of a key wins
srun --kill-on-bad-exit=1 "$PYTHON" -m cats_ds.tools.launchcheck slurm-exec \
  "$PYTHON" -m cats_ds.train --config "$config" "train.run_dir=$run_dir" "$@" &
srun_pid=$!
# a trapped signal ends wait early: wait again until srun has exited
status=0
wait "$srun_pid" || status=$?
while kill -0 "$srun_pid" 2>/dev/null; do status=0; wait "$srun_pid" || status=$?; done
if [ "$requeue" = true ]; then
  echo "requeueing job $SLURM_JOB_ID: it resumes from its run directory's last checkpoint" >&2
  exec scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
