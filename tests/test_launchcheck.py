"""cats_ds.tools.launchcheck: hostfiles, Slurm variables and jobs files are checked before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cats_ds.tools.launchcheck import (Host, LaunchError, check_hostfile, check_slurm_job, expand_nodelist, job_line,
                                       parse_hostfile, probe_host, slurm_rank_env, slurm_run_dir)
from conftest import REPO

# what srun gives task 3 of a 2-node, 2-tasks-per-node step
TASK_ENV = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
            "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]"}
JOB_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "gpu[07-08]"}


def write(tmp_path, text: str, name: str = "hostfile"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_hostfile_with_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, "# two nodes\nnode1 slots=8\n\nnode2   slots=4  # smaller\n")
    assert parse_hostfile(path) == [Host("node1", 8, 2), Host("node2", 4, 4)]


@pytest.mark.parametrize("text, message", [
    ("node1 slots=8\nnode1 slots=8\n", r"hostfile:2: host node1 is already on line 1; list each host once"),
    ("node1 slots=8\nnode2\n", r"hostfile:2: expected 'HOST slots=N', got 'node2'"),
    ("node1 8\n", r"hostfile:1: expected 'HOST slots=N'"),
    ("node1 slots=0\n", r"hostfile:1: slots=0 for node1; slots must be .* at least 1"),
    ("node1 slots=-2\n", r"hostfile:1: slots=-2"),
    ("node1 slots=two\n", r"hostfile:1: slots=two"),
    ("# nothing\n\n", r"hostfile: no hosts; write one line 'HOST slots=N' per node"),
])
def test_malformed_hostfiles_are_refused_naming_the_line(tmp_path, text, message):
    with pytest.raises(LaunchError, match=message):
        parse_hostfile(write(tmp_path, text))


def test_missing_hostfile_is_named(tmp_path):
    with pytest.raises(LaunchError, match="hostfile .*nope: cannot read it"):
        parse_hostfile(tmp_path / "nope")


def test_unreachable_hosts_are_all_named_with_their_lines(tmp_path):
    path = write(tmp_path, "good slots=2\nbad1 slots=2\nbad2 slots=2\n")
    probed = []

    def probe(name):
        probed.append(name)
        return None if name == "good" else "its name does not resolve"

    with pytest.raises(LaunchError) as err:
        check_hostfile(path, probe)
    assert str(err.value).splitlines() == [
        f"{path}:2: host bad1: its name does not resolve", f"{path}:3: host bad2: its name does not resolve",
        "fix or remove these lines of the hostfile"]
    assert probed == ["good", "bad1", "bad2"]
    assert check_hostfile(write(tmp_path, "good slots=2\n"), probe) == [Host("good", 2, 1)]


def test_probe_resolves_the_name_then_tries_ssh(monkeypatch):
    assert "does not resolve" in probe_host("no-such-host.invalid")
    commands = []
    monkeypatch.setattr("cats_ds.tools.launchcheck._quiet", lambda command, timeout: commands.append(command[0]) or
                        (255 if command[0] == "ssh" else 0))
    assert "'ssh -o BatchMode=yes node7 true' fails" in probe_host("node7")
    assert commands == ["getent", "ssh"]


@pytest.mark.parametrize("nodelist, hosts", [
    ("node1", ["node1"]),
    ("a1,b2", ["a1", "b2"]),
    ("gpu[01-03,7],login1", ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]),
    ("x[8-11]-ib", ["x8-ib", "x9-ib", "x10-ib", "x11-ib"]),
])
def test_slurm_node_lists_expand_like_scontrol(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_node_list_with_two_bracket_groups_is_refused():
    with pytest.raises(LaunchError, match=r"cannot expand 'r\[1-2\]n\[1-2\]'"):
        expand_nodelist("r[1-2]n[1-2]")


def test_task_variables_become_torch_distributed_ones():
    assert slurm_rank_env(TASK_ENV) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_SIZE": "2",
                                        "MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + 4242)}
    assert slurm_rank_env({**TASK_ENV, "MASTER_PORT": "29555"})["MASTER_PORT"] == "29555"


@pytest.mark.parametrize("change, message", [
    ({"SLURM_PROCID": None}, "SLURM_PROCID not set: start the trainer with srun"),
    ({"SLURM_NTASKS": "3"}, "SLURM_NTASKS=3 is not divisible by SLURM_NNODES=2: .*--ntasks-per-node"),
    ({"SLURM_NNODES": "x"}, "SLURM_NNODES='x': expected a whole number"),
    ({"SLURM_STEP_NODELIST": "gpu07"}, "SLURM_STEP_NODELIST=gpu07 names 1 nodes but the allocation has 2"),
    ({"SLURM_STEP_NODELIST": None, "SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST not set: run inside"),
])
def test_inconsistent_task_variables_are_refused(change, message):
    env = {k: v for k, v in {**TASK_ENV, **change}.items() if v is not None}
    with pytest.raises(LaunchError, match=message):
        slurm_rank_env(env)


def test_job_variables_give_nodes_and_tasks_per_node():
    assert check_slurm_job(JOB_ENV) == (2, 2)


@pytest.mark.parametrize("change, message", [
    ({"SLURM_NTASKS": "3"}, "SLURM_NTASKS=3 is not divisible by SLURM_JOB_NUM_NODES=2: .*--ntasks-per-node=K"),
    ({"SLURM_NTASKS": None}, "SLURM_NTASKS not set: submit with sbatch"),
    ({"SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST not set"),
    ({"SLURM_JOB_NODELIST": "gpu[07-09]"}, "names 3 nodes but the allocation has 2"),
])
def test_inconsistent_job_variables_are_refused(change, message):
    env = {k: v for k, v in {**JOB_ENV, **change}.items() if v is not None}
    with pytest.raises(LaunchError, match=message):
        check_slurm_job(env)


def test_run_directory_is_per_job_and_per_array_task():
    assert slurm_run_dir(JOB_ENV) == "runs/slurm-4242"
    assert slurm_run_dir({**JOB_ENV, "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}) == "runs/slurm-4240_2"


def test_job_lines_split_like_a_shell(tmp_path):
    path = write(tmp_path, "a.yaml train.max_steps=5\nb.yml 'data.hub_directions=[fr-en, de-en]' x.y=1\n", "jobs")
    assert job_line(path, 0) == ["a.yaml", "train.max_steps=5"]
    assert job_line(path, 1) == ["b.yml", "data.hub_directions=[fr-en, de-en]", "x.y=1"]


@pytest.mark.parametrize("text, index, message", [
    ("a.yaml x=1\n", 1, r"jobs has 1 lines, so array task 1 has no line 2: submit with --array=0-0"),
    ("a.yaml x=1\n\n", 1, r"jobs:2: empty line"),
    ("train.max_steps=5 a.yaml\n", 0, r"jobs:1: the first word must be the run config"),
    ("a.yaml data.hub_directions=[fr-en, de-en]\n", 0, r"jobs:1: 'de-en\]' not key=value; quote values"),
    ("a.yaml 'x=1\n", 0, r"jobs:1: No closing quotation"),
])
def test_bad_job_lines_are_refused_naming_file_and_line(tmp_path, text, index, message):
    with pytest.raises(LaunchError, match=message):
        job_line(write(tmp_path, text, "jobs"), index)


def launchcheck(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cats_ds.tools.launchcheck", *args], capture_output=True, text=True,
                          cwd=REPO, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **env}, timeout=60)


def test_command_line_job_line_reads_the_array_task_and_refuses_without_it(tmp_path):
    path = write(tmp_path, "a.yaml x=1\nb.yaml y='two words'\n", "jobs")
    assert launchcheck("job-line", str(path), env={"SLURM_ARRAY_TASK_ID": "1"}).stdout == "b.yaml\ny=two words\n"
    refused = launchcheck("job-line", str(path), env={})
    assert refused.returncode == 2
    assert "SLURM_ARRAY_TASK_ID not set: submit as an array, sbatch --array=0-N" in refused.stderr


def test_command_line_slurm_exec_starts_the_command_with_rank_variables():
    script = "import json, os; print(json.dumps({k: os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR')}))"
    result = launchcheck("slurm-exec", sys.executable, "-c", script, env=TASK_ENV)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "gpu07"}


def test_command_line_refusals_exit_2_with_the_message(tmp_path):
    result = launchcheck("slurm-job", env={})
    assert result.returncode == 2
    assert result.stderr.startswith("launchcheck: SLURM_JOB_ID, SLURM_JOB_NUM_NODES, SLURM_NTASKS not set")
    assert launchcheck("no-such-command", env={}).returncode == 2
