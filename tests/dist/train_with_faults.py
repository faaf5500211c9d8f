"""The trainer with the fault of ``CATS_DS_FAULT`` (see faults.py) installed from outside:

    deepspeed --num_accelerators 2 tests/dist/train_with_faults.py --config RUN.yaml

Same arguments as ``python -m cats_ds.train``. The fault points wrap what the trainer calls:
``step`` after cats_ds.train.train_step returns, ``save`` after DeepSpeed has written a
checkpoint's files (before cats_ds.checkpoint commits it), ``loss`` on the training loss of
one task in one step (cats_ds.train.token_loss, the task taken from cats_ds.train.collate).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import sys

from deepspeed import DeepSpeedEngine

import faults
from cats_ds import train

SIGNALS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigusr1": signal.SIGUSR1}


def inject(fault: faults.Fault, point: str, step: int) -> None:
    """Sends this process the fault's signal at this point, step and rank."""
    if fault.kind in SIGNALS and fault.hits(point, step, rank=int(os.environ.get("RANK", "0"))):
        os.kill(os.getpid(), SIGNALS[fault.kind])


def install(fault: faults.Fault) -> None:
    now = {"run": None, "task": None}       # the step being trained and the task of its current window
    train_step, collate, token_loss = train.train_step, train.collate, train.token_loss
    save_checkpoint = DeepSpeedEngine.save_checkpoint

    @functools.wraps(train_step)
    def train_step_then_fault(run):
        now["run"] = run
        metrics = train_step(run)
        inject(fault, "step", run.step)
        return metrics

    @functools.wraps(collate)
    def collate_noting_task(task, *args, **kwargs):
        now["task"] = next(n for n, known in enumerate(now["run"].train_tasks) if known is task)
        return collate(task, *args, **kwargs)

    @functools.wraps(token_loss)
    def poisoned_token_loss(*args, **kwargs):
        loss = token_loss(*args, **kwargs)
        if fault.kind == "nan" and fault.hits("loss", now["run"].step + 1, task=now["task"]):
            loss = dataclasses.replace(loss, smoothed_sum=loss.smoothed_sum * math.nan, nll_sum=loss.nll_sum * math.nan)
        return loss

    @functools.wraps(save_checkpoint)
    def save_then_fault(engine, save_dir, tag=None, **kwargs):
        result = save_checkpoint(engine, save_dir, tag=tag, **kwargs)
        inject(fault, "save", int(str(tag).split(".")[0].removeprefix("step")))
        return result

    train.train_step, train.collate, train.token_loss = train_step_then_fault, collate_noting_task, poisoned_token_loss
    DeepSpeedEngine.save_checkpoint = save_then_fault


if __name__ == "__main__":
    spec = os.environ.get("CATS_DS_FAULT")
    if spec:
        install(faults.parse(spec))
    train.main(sys.argv[1:])
