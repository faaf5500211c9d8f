"""The project's own Slurm scripts on a real cluster: train.sbatch on 2 tasks, array.sbatch on a 2-line sweep.

Needs sbatch and an idle node: `bash launch/test.sh` brings up a one-node cluster on this
machine when run as root with CI=true or CATS_DS_SLURM=1 (launch/slurm/local_cluster.sh).
The jobs write to runs/slurm-* in the repository (their default run directories); removed after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from cats_ds.metrics import read_metrics
from conftest import REPO
from corpus_fixture import write_config, write_corpus

pytestmark = pytest.mark.slow
QUICK = ["train.max_steps=4", "eval.test_sentences=4"]


@pytest.fixture(scope="module")
def slurm():
    """Skips, saying why, without sbatch or an idle node with 2 CPUs."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch not on PATH: run `CATS_DS_SLURM=1 bash launch/test.sh` as root for a local cluster")
    idle = subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N %c"], capture_output=True, text=True,
                          timeout=30).stdout.split()
    if not any(int(cpus) >= 2 for cpus in idle[1::2]):
        pytest.skip(f"no idle Slurm node with 2 CPUs (sinfo -t idle: {idle or 'none'})")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    # run_dir "unused": the Slurm scripts give every job its own
    config = write_config(root / "tiny.yaml", write_corpus(root / "corpus"), root / "unused", root / "cache")
    return root, config


def sbatch(root, *args: str) -> str:
    """Submits from the repository root; returns the job id."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["sbatch", "--parsable", f"--output={root}/%x-%j.out", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_state(job: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, Restarts, ...); an array job gives its first task."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    return dict(item.split("=", 1) for item in out.splitlines()[0].split() if "=" in item) if out else {}


def job_logs(root) -> str:
    # errors="replace" here and below: two ranks' progress bars interleave mid-character
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in root.glob("*.out"))


def wait_until(condition, what: str, root, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{job_logs(root)}")
        time.sleep(1)


def wait_for_jobs(job: str, root) -> None:
    """Waits until no task of the job is pending or running; fails with the logs unless all completed."""
    def done() -> bool:
        return not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip()
    wait_until(done, f"job {job} to end", root)
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    states = [line.split("JobState=")[1].split()[0] for line in out.splitlines()]
    if set(states) != {"COMPLETED"}:
        reasons = [line.split("Reason=")[1].split()[0] for line in out.splitlines()]
        pytest.fail(f"job {job} ended {states}, reason {reasons}\n{job_logs(root)}")


@pytest.fixture
def run_dirs():
    """Job run directories to remove from runs/ afterwards."""
    made: list = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def test_train_sbatch_runs_two_ranks_and_a_usr1_requeue_resumes_the_run(slurm, workspace, run_dirs):
    root, config = workspace
    job = sbatch(root, "--ntasks-per-node=2", "--time=5", "launch/slurm/train.sbatch", str(config),
                 "train.max_steps=60", "train.save_every=5", "eval.test_sentences=4")
    run_dir = REPO / "runs" / f"slurm-{job}"
    run_dirs.append(run_dir)
    # what Slurm does before the time limit (--signal=B:USR1@120), once a checkpoint exists
    wait_until(lambda: (run_dir / "checkpoints" / "latest").exists(), "the first checkpoint", root)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    # Slurm holds a requeued job for two minutes; release it sooner, but not at once: slurmd revokes
    # the old run's credential with 1 s resolution, and a restart in that second is killed as
    # "non-startable batch job: Job credential revoked" (seen in CI)
    wait_until(lambda: job_state(job).get("Reason") == "BeginTime", "the job to be requeued", root)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+5"], check=True, timeout=30)
    wait_for_jobs(job, root)
    assert job_state(job)["Restarts"] == "1"
    log = (root / f"cats-ds-{job}.out").read_text(errors="replace")
    assert f"run directory runs/slurm-{job}" in log and "requeueing job" in log
    runs = read_metrics(run_dir / "metrics.jsonl", "run")
    assert len(runs) == 2 and runs[0]["world_size"] == 2 and runs[1]["step"] >= 5   # the second run resumed
    assert read_metrics(run_dir / "metrics.jsonl", "train")[-1]["step"] == 60
    assert set(json.loads((run_dir / "results.json").read_text())["test"]) == {"de-en", "es-en", "fr-en"}


def test_array_task_i_runs_line_i_plus_1_of_the_jobs_file(slurm, workspace, run_dirs, tmp_path):
    root, config = workspace
    jobs = tmp_path / "sweep.jobs"
    # the two tasks run at once: a cache directory each, so they do not prepare the same files together
    jobs.write_text(f"{config} {' '.join(QUICK)} data.cache_dir={tmp_path}/c0 cats.enabled=false "
                    "train.ds_config=ds_configs/zero1.json\n"
                    f"{config} {' '.join(QUICK)} data.cache_dir={tmp_path}/c1 train.max_steps=3\n")
    job = sbatch(root, "--array=0-1", "--ntasks-per-node=1", "--time=5", "launch/slurm/array.sbatch", str(jobs))
    wait_for_jobs(job, root)
    first, second = REPO / "runs" / f"slurm-{job}_0", REPO / "runs" / f"slurm-{job}_1"
    run_dirs.extend([first, second])
    assert len(read_metrics(first / "metrics.jsonl", "train")) == 4
    assert "cats" not in read_metrics(first / "metrics.jsonl", "train")[-1]
    assert len(read_metrics(second / "metrics.jsonl", "train")) == 3
    assert "cats" in read_metrics(second / "metrics.jsonl", "train")[-1]
    assert (first / "results.json").exists() and (second / "results.json").exists()
