"""The owner's duty-cycle limit: work runs at most a fraction F of wall time.

The agent passes F to everything its Ray node runs through the environment; a job
calls `after_work()` between small pieces of work and sleeps in proportion to the
work it just did (BOINC's "use at most F of CPU time", done cooperatively).

Work is this process's CPU time, not wall time: time spent waiting (for a busy
CPU, for other workers in an all-reduce, for the disk) is not work, and resting
in proportion to it would make a wait feed on itself.
"""

from __future__ import annotations

import os
import time

DUTY_CYCLE_ENV = "SALVAGE_DUTY_CYCLE"


class DutyCycle:
    def __init__(self, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"duty-cycle: expected a fraction in (0, 1], got {fraction}")
        self.fraction = fraction
        self.mark = time.process_time()
        self.rested_by = 0.0  # monotonic time a deferred rest ends

    @classmethod
    def from_env(cls) -> DutyCycle | None:
        """The limit this process runs under, or None for no limit."""
        raw = os.environ.get(DUTY_CYCLE_ENV)
        if not raw:
            return None
        limit = cls(float(raw))
        return None if limit.fraction >= 1 else limit

    def start(self) -> None:
        """Work begins now (what ran before this is not counted)."""
        self.mark = time.process_time()

    def rest_due(self) -> float:
        """Seconds of rest that the work since the last rest calls for."""
        return (time.process_time() - self.mark) * (1 - self.fraction) / self.fraction

    def after_work(self) -> None:
        """Sleep so that the work since the last call fills only `fraction` of the time."""
        time.sleep(self.rest_due())
        self.mark = time.process_time()

    def defer(self) -> None:
        """Owe the rest that the work since the last one calls for, rather than take it
        now: time spent waiting (for other PCs, for new work) counts towards it, and
        `resume` takes what is left of it."""
        self.rested_by = time.monotonic() + self.rest_due()
        self.mark = time.process_time()

    def resume(self) -> None:
        """Before new work: finish a deferred rest; the work begins now."""
        left = self.rested_by - time.monotonic()
        if left > 0:
            time.sleep(left)
        self.mark = time.process_time()
