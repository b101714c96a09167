"""A device that fails takes no work until it proves itself again.

A GPU that falls off the bus, raises an Xid critical error or counts new
uncorrectable ECC errors becomes unhealthy here at once (its work steps aside
through the pause file); so does the whole PC when the head says its tasks
keep failing. It comes back only after a health check passes: a short compute
test whose answer is checked, run in a child process, first after
CHECK_BACKOFF_S[0] and then, while it keeps failing, twice as long each time.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from .records import GpuSample

CHECK_BACKOFF_S = (10.0, 600.0)  # first wait, longest wait


@dataclass
class Sick:
    why: str
    since: float
    next_check: float
    failed_checks: int = 0


def run_check(device: str, timeout: float = 120.0) -> tuple[bool, str]:
    """Run the compute test on `device` ("cpu", "gpuN") in a child; (passed, one line)."""
    cmd = [sys.executable, "-P", "-m", "workers.benchmark", "--check", device]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"the check did not finish ({type(err).__name__})"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"the check failed: {last[:200]}"
    try:
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return False, "the check answered nonsense"
    return bool(result.get("ok")), str(result.get("detail", ""))[:200]


class HealthMonitor:
    """Which devices are unhealthy now, and their checks. `check(device)` runs the
    compute test (a child process; tests pass their own); checks run in a thread
    of their own so the agent's poll never waits for one."""

    def __init__(self, check=run_check, clock=time.time):
        self.check = check
        self.clock = clock
        self.sick: dict[str, Sick] = {}  # "gpuN" or "host" -> why
        self.notes: list[str] = []  # what happened since the caller last looked
        self._seen: dict[int, tuple[int, int]] = {}  # gpu -> (xid count, ecc count) at the last poll
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def observe(self, samples: list[GpuSample], xid: dict[int, int]) -> None:
        """A poll's readings: a lost GPU, new Xid errors or new ECC errors make it unhealthy."""
        for s in samples:
            errors = (xid.get(s.index, 0), s.ecc_errors or 0)
            before = self._seen.get(s.index, errors)
            self._seen[s.index] = errors
            if s.lost:
                self.mark(f"gpu{s.index}", "lost (fell off the bus)")
            elif errors[0] > before[0]:
                self.mark(f"gpu{s.index}", f"Xid critical error ({errors[0] - before[0]} new)")
            elif errors[1] > before[1]:
                self.mark(f"gpu{s.index}", f"uncorrectable ECC errors ({errors[1] - before[1]} new)")

    def mark(self, device: str, why: str) -> None:
        with self._lock:
            if device in self.sick:
                return
            now = self.clock()
            self.sick[device] = Sick(why, now, now + CHECK_BACKOFF_S[0])
            self.notes.append(f"{device} unhealthy: {why}; a health check follows in {CHECK_BACKOFF_S[0]:.0f} s")

    def due(self, still_lost: set[str]) -> None:
        """Start the checks that are due. A GPU NVML still reports lost is not
        checked (it would fail); its backoff starts when it is seen again."""
        now = self.clock()
        with self._lock:
            for device, sick in self.sick.items():
                if device in self._running or now < sick.next_check:
                    continue
                if device in still_lost:
                    sick.next_check = now + CHECK_BACKOFF_S[0]
                    continue
                self._running.add(device)
                threading.Thread(target=self._run, args=(device,), daemon=True, name=f"check-{device}").start()

    def _run(self, device: str) -> None:
        passed, detail = self.check("cpu" if device == "host" else device)
        with self._lock:
            self._running.discard(device)
            sick = self.sick.get(device)
            if sick is None:
                return
            if passed:
                del self.sick[device]
                self.notes.append(f"{device} healthy again: the health check passed ({detail})")
                return
            sick.failed_checks += 1
            wait = min(CHECK_BACKOFF_S[1], CHECK_BACKOFF_S[0] * 2 ** sick.failed_checks)
            sick.next_check = self.clock() + wait
            self.notes.append(f"{device} still unhealthy: {detail}; next check in {wait:.0f} s")

    def gpus(self) -> dict[int, str]:
        with self._lock:
            return {int(d[3:]): s.why for d, s in self.sick.items() if d.startswith("gpu")}

    def host(self) -> str | None:
        with self._lock:
            sick = self.sick.get("host")
            return sick.why if sick else None

    def take_notes(self) -> list[str]:
        with self._lock:
            notes, self.notes = self.notes, []
        return notes
