"""Process-group set-up and the few collectives the trainer needs, for 1 process or many.

A plain ``python -m cats_ds.train`` gets a one-process group, so every code path (ZeRO
included) is the same as under the ``deepspeed`` launcher or Slurm. The backend follows
DeepSpeed's accelerator (NCCL on GPUs, gloo on the CPU), and every tensor collective takes a
tensor on the training device (cats_ds.placement): NCCL refuses host tensors.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import deepspeed
import deepspeed.comm as dist
import torch

from cats_ds import placement


# a torch extension build takes a minute or two; a lock older than this was left by a killed one
STALE_LOCK_SECONDS = 15 * 60


class StaleBuildLock(RuntimeError):
    """A lock file that a killed build of a torch extension left: every later start waits on it."""


def refuse_stale_build_locks(now: float | None = None) -> None:
    """torch builds DeepSpeed's extensions (the CPU shared-memory all-reduce, fused optimizers)
    under a lock file that it removes when the build ends; a process killed mid-build leaves it,
    and every later start then waits on it forever. Such a lock is refused, naming the file."""
    from torch.utils.cpp_extension import get_default_build_root
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    now = time.time() if now is None else now
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        age = now - lock.stat().st_mtime
        if age > STALE_LOCK_SECONDS:
            raise StaleBuildLock(f"{lock}: left by a build of a torch extension that did not finish "
                                 f"({age / 60:.0f} minutes old); every start would wait on it: remove it "
                                 "(no build is running) and start again")


def init() -> None:
    """Initializes the process group; a single plain process gets a world of one."""
    refuse_stale_build_locks()
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    placement.bind(local_rank())   # before the first collective: NCCL uses the current device
    deepspeed.init_distributed(dist_backend=placement.communication_backend(), verbose=False)
    _unlink_shared_memory_names()


def _unlink_shared_memory_names() -> None:
    """DeepSpeed's CPU all-reduce maps one ~70 MB /dev/shm file per rank and never removes it,
    so every CPU run leaked memory until reboot. Each rank has mapped all of its peers' files
    when init returns; after a barrier the names can go (the mappings stay valid)."""
    shm, address, port = Path("/dev/shm"), os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (shm.is_dir() and address and port):
        return
    barrier()
    (shm / f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank()}").unlink(missing_ok=True)


def shutdown() -> None:
    """Destroys the process group, joining its threads before the interpreter exits: left to
    interpreter teardown, a rank that had finished cleanly sometimes aborted with "terminate
    called without an active exception" (exit code -6; seen in the reliability and Slurm tests)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rank() -> int:
    return dist.get_rank()


def launch_rank() -> int:
    """This process's rank, also before the process group exists: the launcher's RANK (0 alone)."""
    return rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    dist.barrier()


def all_reduce_sum(values: torch.Tensor, group=None) -> torch.Tensor:
    """Sums a tensor on the training device over ranks (in place) and returns it."""
    _check_placed(values)
    dist.all_reduce(values, group=group)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    gathered: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of a tensor on the training device over ranks (in place) and returns it."""
    _check_placed(values)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def _check_placed(values: torch.Tensor) -> None:
    if values.device != placement.device():
        raise ValueError(f"a collective got a tensor on {values.device}, the training device is "
                         f"{placement.device()}: make it with cats_ds.placement")


def free_port() -> int:
    """A free local TCP port: jobs run side by side must not share the launcher's default 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
