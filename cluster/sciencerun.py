"""The body of a science task: many work units in one Ray task on a worker
node, the way a BOINC client fetches several jobs per request."""
from __future__ import annotations

import os

from workers.agent import CORRUPT_RESULTS_ENV


def run_science_tasks(tasks: list, device: str) -> list:
    from jobs.science.runner import run_tasks

    return run_tasks(tasks, device=device, corrupt=os.environ.get(CORRUPT_RESULTS_ENV) == "1")
