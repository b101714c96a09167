"""The Ray entry point for science on a PC: many work units in one Ray task,
the way a BOINC client fetches several jobs per request."""
from __future__ import annotations

import os

from jobs.dutycycle import DutyCycle
from jobs.science.runner import run_tasks
from jobs.science.tasks import Task

from .faults import CORRUPT_RESULTS_ENV


def run_science_tasks(rows: list[tuple], device: str) -> list[tuple]:
    """Tasks and reports cross Ray as plain tuples: thousands of them per call,
    and a tuple (de)serialises several times faster than a dataclass."""
    reports = run_tasks([Task(*row) for row in rows], device=device,
                        corrupt=os.environ.get(CORRUPT_RESULTS_ENV) == "1", throttle=DutyCycle.from_env())
    return [(r.result_id, r.outcome, r.payload) for r in reports]
