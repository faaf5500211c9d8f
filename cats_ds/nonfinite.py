"""The one decision a training step makes about NaN/Inf: take the optimizer step, skip it, or
stop the run.

A step is finite when every task's loss is finite and, with CATS on, its statistics are too
(cats_ds/cats/hook.py reports that; the scaler is left untouched on a step that is not).
A finite step is taken. A non-finite one drops its gradients (cats_ds.cats.zero.discard_gradients)
and leaves the optimizer, the schedule and the CATS scaler as they were; under fp16 it goes to
``engine.step()`` instead, where DeepSpeed's loss scaler sees the overflow, skips the step and
lowers the scale (an fp16 gradient overflow with a finite loss is the loss scaler's business,
not divergence). ``train.max_nonfinite_steps`` skipped steps in a row stop the run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from cats_ds.cats.zero import discard_gradients

log = logging.getLogger(__name__)


@dataclass
class NonFiniteGuard:
    limit: int                    # train.max_nonfinite_steps
    task_names: list[str]
    total: int = 0                # steps skipped for a NaN/Inf loss or gradient, in all (checkpointed)
    streak: int = 0               # ... and in a row up to now

    def step(self, engine, task_loss: np.ndarray, statistics_finite: bool, step: int) -> bool:
        """Takes or skips optimizer step ``step`` (1-based); returns whether it was applied."""
        loss_finite = bool(np.isfinite(task_loss).all())
        finite = loss_finite and statistics_finite
        if finite or engine.fp16_enabled():
            engine.step()
        else:
            discard_gradients(engine)
        applied = finite and bool(engine.was_step_applied())
        loss_scaler_skip = engine.fp16_enabled() and loss_finite
        self._count(applied, loss_scaler_skip, task_loss, step)
        return applied

    def _count(self, applied: bool, loss_scaler_skip: bool, task_loss: np.ndarray, step: int) -> None:
        self.streak = 0 if applied or loss_scaler_skip else self.streak + 1
        self.total += not applied
        if not applied:
            bad = [name for name, value in zip(self.task_names, task_loss) if not math.isfinite(value)]
            log.warning("step %d skipped: non-finite %s", step, f"loss in {', '.join(bad)}" if bad else "gradient")
        if self.streak >= self.limit:
            raise FloatingPointError(
                f"{self.limit} steps in a row had a non-finite loss or gradient (up to step {step}); the model is "
                "diverging: lower optim.lr, raise optim.warmup_steps or check the data, then resume from the last "
                "checkpoint (train.max_nonfinite_steps sets this limit)")
