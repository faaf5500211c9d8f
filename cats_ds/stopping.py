"""When training stops before max_steps: a stop signal or the time budget, agreed by every rank.

SIGTERM and SIGUSR1 (what Slurm sends before a time limit or preemption) ask training to stop
at the next step boundary, save a checkpoint and exit cleanly; the handlers only record the
signal, so a save or an evaluation in progress is never cut.
"""

from __future__ import annotations

import signal
import time

from cats_ds import distributed, placement


class Stopping:
    """Installs the signal handlers for the ``with`` block and answers, once a step, whether
    training stops there (``requested``)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, budget_minutes: float, max_steps: int, first_step: int) -> None:
        self.budget_minutes, self.max_steps, self.first_step = budget_minutes, max_steps, first_step
        self.received: str | None = None       # the name of the signal that stopped the run
        self.started = time.monotonic()
        self._previous: dict = {}

    def __enter__(self) -> Stopping:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name

    def requested(self) -> str | None:
        """"signal", "time" or None. Every rank must stop at the same step: one all-reduce shares
        the slowest rank's clock and the stop signal any rank received (then recorded on all)."""
        received = signal.Signals[self.received].value if self.received else 0
        state = placement.as_tensor([time.monotonic() - self.started, received])
        elapsed, signum = distributed.all_reduce_max(state).tolist()
        if signum:
            self.received = signal.Signals(int(signum)).name
            return "signal"
        return "time" if self.budget_minutes and elapsed >= 60 * self.budget_minutes else None

    def expected_last_step(self, step: int) -> int:
        """The step training will stop at: max_steps, or sooner where the time budget runs out first."""
        steps_done, elapsed = step - self.first_step, time.monotonic() - self.started
        if not self.budget_minutes or steps_done == 0:
            return self.max_steps
        remaining = max(0.0, 60 * self.budget_minutes - elapsed)
        return min(self.max_steps, step + int(remaining * steps_done / elapsed))
