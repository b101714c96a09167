"""How the agent tells the work on its PC to step aside, within a second.

The agent keeps one small JSON file, whose path every task on its Ray node
finds in $SALVAGE_PAUSE_FILE:

    {"host": "owner_input" | null,      # the whole PC is paused, and why
     "gpus": {"0": "gpu_hot"},          # single GPUs that are paused
     "science": "preempted" | null}     # science only steps aside (training needs the PC)

A task asks its `PauseWatch` between steps (at most one stat per 50 ms while
nothing changes);
when it says stop, the task checkpoints and hands its work back. Nothing is
lost: training resumes from its checkpoint, science units are given back to
the head unreported and sent again.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

PAUSE_FILE_ENV = "SALVAGE_PAUSE_FILE"
# A task asks between steps, for science between units: tens of thousands of times a
# second for small units, where a stat each time was a fifth of the task's work.
LOOK_EVERY_S = 0.05


def write(path: Path, host: str | None, gpus: dict[int, str], science: str | None) -> None:
    """Replace the file in one step: a task never reads half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"host": host, "gpus": {str(i): r for i, r in gpus.items()}, "science": science}))
    os.replace(tmp, path)


class PauseWatch:
    """`device` is "cpu" or "gpuN": the device the task runs on. `science`: the
    task is science, which also yields to training."""

    def __init__(self, path: str | None, device: str, science: bool = False):
        self.path = path
        self.gpu = device[3:] if device.startswith("gpu") else None
        self.science = science
        self._stamp: tuple[int, int] | None = None
        self._reason: str | None = None
        self._next_look = 0.0

    @classmethod
    def here(cls, device: str, science: bool = False) -> PauseWatch:
        return cls(os.environ.get(PAUSE_FILE_ENV), device, science)

    def reason(self) -> str | None:
        """Why this task must step aside now, or None."""
        if not self.path:
            return None
        now = time.monotonic()
        if now < self._next_look:
            return self._reason
        self._next_look = now + LOOK_EVERY_S
        try:
            st = os.stat(self.path)
        except OSError:
            self._reason = None
            return None  # no file: nothing is paused
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                state = json.loads(Path(self.path).read_text())
            except (OSError, ValueError):
                return self._reason  # being replaced: keep the last answer
            gpu = state.get("gpus", {}).get(self.gpu) if self.gpu is not None else None
            self._reason = state.get("host") or gpu or (state.get("science") if self.science else None)
        return self._reason

    def __call__(self) -> bool:
        return self.reason() is not None
