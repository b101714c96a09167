"""The Ray entry point for science on a PC: many work units in one Ray task,
the way a BOINC client fetches several jobs per request."""
from __future__ import annotations

import os
from pathlib import Path

from jobs.dutycycle import DutyCycle
from jobs.science.tasks import Task

from .claims import DeviceClaim
from .faults import CORRUPT_RESULTS_ENV
from .pausing import PauseWatch

# Set by the agent on its Ray node: where science units keep their checkpoints, so
# a unit that stepped aside resumes from it when this PC gets it again.
CHECKPOINT_DIR_ENV = "SALVAGE_CHECKPOINT_DIR"


def run_science_tasks(rows: list[tuple], device: str) -> list[tuple]:
    """Tasks and reports cross Ray as plain tuples: thousands of them per call,
    and a tuple (de)serialises several times faster than a dataclass. When the PC
    must step aside (its owner, training needs it), the unit running checkpoints
    and the rest go back unreported, to be sent again."""
    ckpt = os.environ.get(CHECKPOINT_DIR_ENV)
    ours = "gpu0" if device.startswith("cuda") else "cpu"
    with DeviceClaim.here(ours):  # the PC's own volunteer client lets go of it now
        # Imported once the device is claimed: an app that computes with torch loads it
        # as its first unit runs, seconds on an old PC, after BOINC has let go.
        from jobs.science.runner import run_tasks

        reports = run_tasks([Task(*row) for row in rows], device=device,
                            corrupt=os.environ.get(CORRUPT_RESULTS_ENV) == "1", throttle=DutyCycle.from_env(),
                            should_stop=PauseWatch.here(ours, science=True),
                            checkpoint_dir=Path(ckpt) / "science" if ckpt else None)
    return [(r.result_id, r.outcome, r.payload) for r in reports]
