"""Fault injection for the reliability tests: a crash or a non-finite loss at a chosen moment.

Test-only: tests/dist/train_with_faults.py installs a fault into the trainer from outside
(it wraps cats_ds.train's functions and DeepSpeed's save), so the training code has no fault
hooks. The fault comes from the environment variable ``CATS_DS_FAULT``,
``KIND:POINT:STEPS[:key=value...]``:

    sigkill:step:7:rank=1     rank 1 kills itself with SIGKILL right after optimizer step 7
    sigkill:save:8            every rank does, in the middle of saving step 8's checkpoint
                              (DeepSpeed's files written, nothing committed yet)
    sigterm:step:5:rank=0     rank 0 sends itself SIGTERM after step 5 (sigusr1: SIGUSR1), as
                              Slurm does before a time limit or preemption
    nan:loss:5:task=1         task 1's loss is NaN in step 5 (on every rank)
    nan:loss:5-1000           every task's loss is NaN from step 5 to step 1000

STEPS is a step number or an inclusive range FIRST-LAST; rank and task default to all.
"""

from __future__ import annotations

from dataclasses import dataclass

_KINDS = {"sigkill": ("step", "save"), "sigterm": ("step",), "sigusr1": ("step",), "nan": ("loss",)}


@dataclass(frozen=True)
class Fault:
    kind: str
    point: str
    first: int
    last: int
    rank: int | None = None
    task: int | None = None

    def hits(self, point: str, step: int, rank: int | None = None, task: int | None = None) -> bool:
        return (point == self.point and self.first <= step <= self.last
                and (self.rank is None or rank is None or rank == self.rank)
                and (self.task is None or task is None or task == self.task))


def parse(spec: str) -> Fault:
    """Parses a ``CATS_DS_FAULT`` value; raises ValueError naming what is wrong."""
    fields = spec.split(":")
    if len(fields) < 3 or fields[0] not in _KINDS or fields[1] not in _KINDS[fields[0]]:
        raise ValueError(f"CATS_DS_FAULT={spec!r}: expected KIND:POINT:STEPS with KIND:POINT one of "
                         f"{[f'{k}:{p}' for k, points in _KINDS.items() for p in points]}")
    try:
        first, _, last = fields[2].partition("-")
        options = dict(item.split("=", 1) for item in fields[3:])
        unknown = set(options) - {"rank", "task"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}")
        return Fault(fields[0], fields[1], int(first), int(last or first),
                     *(int(options[key]) if key in options else None for key in ("rank", "task")))
    except ValueError as err:
        raise ValueError(f"CATS_DS_FAULT={spec!r}: {err}") from None
