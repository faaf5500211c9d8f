"""Run directories are owned: one live run at a time writes into a ``train.run_dir``.

Two runs in one directory would mix their checkpoints, config.yaml and metrics.jsonl. Rank 0
holds an exclusive ``flock`` on ``RUN_DIR/.run.lock`` for the life of the run; the kernel
drops it when the process ends in any way (SIGKILL and OOM kills included), so a crashed run
never leaves the directory stuck, and the file's text (pid, host, start time) only names
the holder for the message a second run gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from cats_ds import distributed

LOCK_NAME = ".run.lock"


class RunDirectoryBusy(RuntimeError):
    """Another live run holds the run directory; the message names the directory and the holder."""


def hold(run_dir: str | Path) -> TextIO:
    """Creates ``run_dir`` and locks it for this process; keep the returned file open as long as
    the run lasts (closing it releases the lock). Raises RunDirectoryBusy when another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_NAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not yet written its name"
        handle.close()
        raise RunDirectoryBusy(f"{run_dir} is in use by another run ({holder}); wait for it to end, stop it, "
                               "or choose another train.run_dir") from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def owned(run_dir: str | Path) -> Iterator[None]:
    """The run directory held by rank 0 for the ``with`` block; all ranks call it, and all raise
    RunDirectoryBusy together when another run holds it (so none waits for the others forever)."""
    handle, refusal = None, None
    if distributed.rank() == 0:
        try:
            handle = hold(run_dir)
        except RunDirectoryBusy as err:
            refusal = str(err)
    refusal = distributed.broadcast_object(refusal)
    if refusal:
        raise RunDirectoryBusy(refusal)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()
