"""Checks run by the launch scripts before any process starts; each refusal says what to change.

    python -m cats_ds.tools.launchcheck hostfile HOSTFILE        # launch/multinode.sh
    python -m cats_ds.tools.launchcheck slurm-job                 # launch/slurm/job.sh: prints the run directory
    python -m cats_ds.tools.launchcheck slurm-exec CMD [ARG ...]  # in a Slurm task: RANK etc. from SLURM_*, exec CMD
    python -m cats_ds.tools.launchcheck job-line JOBS_FILE        # array.sbatch: line SLURM_ARRAY_TASK_ID+1, word by word

Standard library only, so that a check costs no torch import.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping


class LaunchError(ValueError):
    """A launch setting that cannot work; the message names the file, line or variable and the fix."""


# ----------------------------------------------------------------------------------------------
# hostfiles (deepspeed --hostfile)

_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\S+)$")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    line: int


def parse_hostfile(path: Path) -> list[Host]:
    """Reads ``HOST slots=N`` lines (blank lines and # comments allowed), as the deepspeed launcher does."""
    try:
        text = path.read_text()
    except OSError as err:
        raise LaunchError(f"hostfile {path}: cannot read it ({err.strerror})") from None
    hosts: dict[str, Host] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            host = _parse_host_line(path, number, line)
            if host.name in hosts:
                raise LaunchError(f"{path}:{number}: host {host.name} is already on line {hosts[host.name].line}; "
                                  "list each host once, with all its slots")
            hosts[host.name] = host
    if not hosts:
        raise LaunchError(f"{path}: no hosts; write one line 'HOST slots=N' per node (N: processes on it)")
    return list(hosts.values())


def _parse_host_line(path: Path, number: int, line: str) -> Host:
    match = _HOST_LINE.match(line)
    if not match:
        raise LaunchError(f"{path}:{number}: expected 'HOST slots=N', got {line!r}")
    name, slots = match.groups()
    if not slots.isdigit() or int(slots) <= 0:
        raise LaunchError(f"{path}:{number}: slots={slots} for {name}; slots must be a whole number of "
                          "processes (GPUs) on that host, at least 1")
    return Host(name, int(slots), number)


def probe_host(name: str, timeout: float = 5.0) -> str | None:
    """None if ``name`` resolves and takes a password-less ssh; else why not.

    The deepspeed launcher ssh-checks the first host and asks it for its address even when the
    hostfile has one host, and reaches every other host by ssh (pdsh).
    """
    if _quiet(["getent", "hosts", name], timeout) != 0:
        return "its name does not resolve (getent hosts)"
    if _quiet(["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(timeout)}", name, "true"], timeout + 5):
        return f"'ssh -o BatchMode=yes {name} true' fails (the launcher needs password-less ssh to every host)"
    return None


def _quiet(command: list[str], timeout: float) -> int:
    try:
        return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 1


def check_hostfile(path: Path, probe: Callable[[str], str | None] = probe_host) -> list[Host]:
    """Parses the hostfile and probes every host; raises LaunchError naming each unreachable one."""
    hosts = parse_hostfile(path)
    problems = [f"{path}:{h.line}: host {h.name}: {why}" for h in hosts if (why := probe(h.name))]
    if problems:
        raise LaunchError("\n".join(problems) + "\nfix or remove these lines of the hostfile")
    return hosts


# ----------------------------------------------------------------------------------------------
# Slurm


def expand_nodelist(nodelist: str) -> list[str]:
    """Expands Slurm's compressed host list, e.g. ``gpu[01-03,7],login1`` (as ``scontrol show hostnames``)."""
    hosts = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):   # split at commas outside brackets
        match = re.fullmatch(r"([^\[\]]*)(?:\[([\d,-]+)\]([^\[\]]*))?", item)
        if not match:
            raise LaunchError(f"node list {nodelist!r}: cannot expand {item!r} (one [ranges] group per name)")
        prefix, ranges, suffix = match.groups()
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            numbers = range(int(first), int(last or first) + 1)
            hosts += [f"{prefix}{number:0{len(first)}d}{suffix}" for number in numbers]   # keeps zero padding
    return hosts


def _int_vars(env: Mapping[str, str], names: tuple[str, ...], fix: str) -> dict[str, int]:
    missing = [n for n in names if n not in env]
    if missing:
        raise LaunchError(f"{', '.join(missing)} not set: {fix}")
    bad = [f"{n}={env[n]!r}" for n in names if not env[n].isdigit()]
    if bad:
        raise LaunchError(f"{', '.join(bad)}: expected a whole number; {fix}")
    return {n: int(env[n]) for n in names}


def _nodes(env: Mapping[str, str], count: int, list_var: str) -> list[str]:
    if not env.get(list_var):
        raise LaunchError(f"{list_var} not set: run inside a Slurm allocation (sbatch or srun)")
    nodes = expand_nodelist(env[list_var])
    if len(nodes) != count:
        raise LaunchError(f"{list_var}={env[list_var]} names {len(nodes)} nodes but the allocation has {count}")
    return nodes


def check_slurm_job(env: Mapping[str, str]) -> tuple[int, int]:
    """Checks the batch job's variables; returns (nodes, tasks per node)."""
    fix = "submit with sbatch (train.sbatch sets --nodes and --ntasks-per-node)"
    values = _int_vars(env, ("SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NTASKS"), fix)
    nodes, tasks = values["SLURM_JOB_NUM_NODES"], values["SLURM_NTASKS"]
    _nodes(env, nodes, "SLURM_JOB_NODELIST")
    if nodes == 0 or tasks % nodes:
        raise LaunchError(f"SLURM_NTASKS={tasks} is not divisible by SLURM_JOB_NUM_NODES={nodes}: every node "
                          "needs the same number of processes; submit with --ntasks-per-node=K instead of --ntasks")
    return nodes, tasks // nodes


def slurm_run_dir(env: Mapping[str, str]) -> str:
    """runs/slurm-JOBID, or runs/slurm-ARRAYJOBID_TASKID for an array task: stable across requeues."""
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"runs/slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return f"runs/slurm-{env['SLURM_JOB_ID']}"


def slurm_rank_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables of one Slurm task (one process per rank, started by srun)."""
    fix = "start the trainer with srun inside the job (launch/slurm/job.sh does)"
    values = _int_vars(env, ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NNODES"), fix)
    tasks, nodes = values["SLURM_NTASKS"], values["SLURM_NNODES"]
    node_list = "SLURM_STEP_NODELIST" if "SLURM_STEP_NODELIST" in env else "SLURM_JOB_NODELIST"
    master = _nodes(env, nodes, node_list)[0]
    if tasks % nodes:
        raise LaunchError(f"SLURM_NTASKS={tasks} is not divisible by SLURM_NNODES={nodes}: run srun with "
                          "--ntasks-per-node=K")
    # every task derives the same port from the job id; MASTER_PORT in the environment wins
    port = env.get("MASTER_PORT") or str(20000 + values["SLURM_JOB_ID"] % 20000)
    return {"RANK": str(values["SLURM_PROCID"]), "WORLD_SIZE": str(tasks),
            "LOCAL_RANK": str(values["SLURM_LOCALID"]), "LOCAL_SIZE": str(tasks // nodes),
            "MASTER_ADDR": master, "MASTER_PORT": port}


# ----------------------------------------------------------------------------------------------
# jobs files (one run per line: CONFIG.yaml key=value ...)


def job_line(path: Path, index: int) -> list[str]:
    """Line index+1 of a jobs file as [CONFIG.yaml, key=value, ...]."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise LaunchError(f"jobs file {path}: cannot read it ({err.strerror})") from None
    if not 0 <= index < len(lines):
        raise LaunchError(f"{path} has {len(lines)} lines, so array task {index} has no line {index + 1}: "
                          f"submit with --array=0-{len(lines) - 1}")
    where = f"{path}:{index + 1}"
    try:
        words = shlex.split(lines[index])
    except ValueError as err:
        raise LaunchError(f"{where}: {err}") from None
    if not words:
        raise LaunchError(f"{where}: empty line; every line must be 'CONFIG.yaml key=value ...'")
    if not words[0].endswith((".yaml", ".yml")):
        raise LaunchError(f"{where}: the first word must be the run config (CONFIG.yaml), got {words[0]!r}")
    not_overrides = [w for w in words[1:] if "=" not in w]
    if not_overrides:
        raise LaunchError(f"{where}: {', '.join(map(repr, not_overrides))} not key=value; quote values "
                          "that contain spaces")
    return words


# ----------------------------------------------------------------------------------------------
# command line


def _array_index(env: Mapping[str, str], jobs_file: Path) -> int:
    if "SLURM_ARRAY_TASK_ID" not in env:
        raise LaunchError(f"SLURM_ARRAY_TASK_ID not set: submit as an array, sbatch --array=0-N "
                          f"launch/slurm/array.sbatch {jobs_file} (N: lines in the file - 1)")
    return _int_vars(env, ("SLURM_ARRAY_TASK_ID",), "it is set by sbatch --array")["SLURM_ARRAY_TASK_ID"]


_USAGE = __doc__.split("\n\n")[1]


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if command == "hostfile" and len(args) == 1:
            hosts = check_hostfile(Path(args[0]))
            print(f"{args[0]}: {len(hosts)} hosts, {sum(h.slots for h in hosts)} processes")
        elif command == "slurm-job" and not args:
            check_slurm_job(os.environ)
            print(slurm_run_dir(os.environ))
        elif command == "slurm-exec" and args:
            os.execvpe(args[0], args, {**os.environ, **slurm_rank_env(os.environ)})
        elif command == "job-line" and len(args) == 1:
            jobs_file = Path(args[0])
            print("\n".join(job_line(jobs_file, _array_index(os.environ, jobs_file))))
        else:
            print(f"usage:\n{_USAGE}", file=sys.stderr)
            return 2
    except LaunchError as err:
        print(f"launchcheck: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
