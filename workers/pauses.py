"""What may run on this PC now, and why not: the owner's policy, the operator's
pauses, the devices' health and the head's preemptions, combined at every poll
into the pause file that the work on this PC watches (tasks/pausing.py).

The head hears of every pause, with its reason, in the next heartbeat, and
places no new work there; the work already running steps aside at once
through the file, without waiting for the head.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .health import HealthMonitor
from .host import Poll
from .idle import idle_seconds
from .policy import Decision, Policy, PolicyError, PolicyState, Readings
from .tasks import pausing


@dataclass
class PauseState:
    host: str | None = None  # reason code (policy.REASONS) the whole PC is paused for
    gpus: dict[int, str] = field(default_factory=dict)
    science: str | None = None  # science alone steps aside (training needs the PC)
    detail: list[str] = field(default_factory=list)  # every reason, in words

    def as_json(self) -> dict:
        return {"host": self.host, "gpus": {str(i): r for i, r in self.gpus.items()}, "science": self.science,
                "detail": self.detail}


class OwnerLoad:
    """The share of the CPU used outside salvage (this agent and everything it
    started), and the share of the RAM salvage holds, since the last reading."""

    def __init__(self):
        self.me = psutil.Process(os.getpid())
        self._last: tuple[float, float, float] | None = None  # (wall, all busy cpu-s, our cpu-s)

    def _ours(self) -> list[psutil.Process]:
        try:
            return [self.me, *self.me.children(recursive=True)]
        except psutil.Error:
            return [self.me]

    def read(self) -> tuple[float, float]:
        procs = self._ours()
        ours_cpu, ours_rss = 0.0, 0
        for p in procs:
            try:
                t = p.cpu_times()
                ours_cpu += t.user + t.system + t.children_user + t.children_system
                ours_rss += p.memory_info().rss
            except psutil.Error:
                continue
        total = psutil.cpu_times()
        busy = total.user + total.nice + total.system + getattr(total, "irq", 0.0) + getattr(total, "softirq", 0.0)
        now = time.monotonic()
        other = 0.0
        if self._last is not None:
            wall = (now - self._last[0]) * (psutil.cpu_count() or 1)
            if wall > 0:
                other = max(0.0, min(1.0, ((busy - self._last[1]) - (ours_cpu - self._last[2])) / wall))
        self._last = (now, busy, ours_cpu)
        return other, ours_rss / max(psutil.virtual_memory().total, 1)


class Pauses:
    """Each poll: read the owner's policy (reloaded when its file changes; a bad
    file keeps the policy in force, with a note), weigh it with the operator's
    pauses and the head's preemption from the last heartbeat and the devices'
    health, and write the pause file when anything changed."""

    def __init__(self, path: Path, policy: Policy, policy_file: Path | None, health: HealthMonitor, say):
        self.path = path
        self.policy_file = policy_file
        self.policy_mtime = policy_file.stat().st_mtime_ns if policy_file else None
        self.engine = PolicyState(policy)
        self.health = health
        self.say = say
        self.load = OwnerLoad()
        self.directives: dict = {}  # from the head's last heartbeat reply
        self.state = PauseState()
        self.decision = Decision(None, {}, [])
        pausing.write(path, None, {}, None)

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    def reload(self) -> None:
        """Take the policy file again if it changed; a bad one changes nothing."""
        if self.policy_file is None:
            return
        try:
            mtime = self.policy_file.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self.policy_mtime:
            return
        self.policy_mtime = mtime
        try:
            policy = Policy.load(self.policy_file)
        except PolicyError as err:
            self.say(f"note: {err}; the policy in force stays")
            return
        self.engine = self.engine.reloaded(policy)
        self.say(f"policy reloaded from {self.policy_file}")

    def update(self, poll: Poll | None, now: float | None = None) -> bool:
        """Decide again; True when what may run changed."""
        now = time.time() if now is None else now
        self.reload()
        other_cpu, ram = self.load.read()
        temps = {g.index: g.temperature_c for g in poll.gpus} if poll else {}
        self.decision = self.engine.decide(Readings(
            now=now, local=dt.datetime.fromtimestamp(now), idle_s=idle_seconds(self.policy.idle_devices, now),
            other_cpu=other_cpu, ram_share=ram, gpu_temps=temps))
        state = PauseState(detail=list(self.decision.detail))
        admin = self.directives.get("admin") or {}
        host_admin = admin.get("host") or {}
        sick_host = self.health.host()
        if self.decision.host:
            state.host = self.decision.host
        elif host_admin.get("state") == "paused":
            state.host = "operator"
        elif sick_host:
            state.host = "unhealthy"
        if host_admin.get("state") == "paused":
            state.detail.append(f"paused by the operator: {host_admin.get('reason') or 'no reason given'}")
        if sick_host:
            state.detail.append(f"unhealthy: {sick_host}")
        for index, why in self.health.gpus().items():
            state.gpus[index] = "unhealthy"
            state.detail.append(f"GPU {index} unhealthy: {why}")
        for index, entry in (admin.get("gpus") or {}).items():
            if entry.get("state") == "paused":
                state.gpus.setdefault(int(index), "operator")
                state.detail.append(f"GPU {index} paused by the operator: {entry.get('reason') or 'no reason given'}")
        for index, why in self.decision.gpus.items():
            state.gpus.setdefault(index, why)
        if self.directives.get("science_yield"):
            state.science = "preempted"
            state.detail.append("science steps aside: a training job needs this PC")
        changed = (state.host, state.gpus, state.science) != (self.state.host, self.state.gpus, self.state.science)
        self.state = state
        if changed:
            pausing.write(self.path, state.host, state.gpus, state.science)
        return changed

    def write_report(self, path: Path) -> None:
        """What `salvage worker policy show` prints: the policy and why now."""
        report = {"at": time.time(), "file": str(self.policy_file) if self.policy_file else None,
                  "policy": self.policy.describe(), "running": self.state.host is None,
                  "paused": self.state.as_json()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(report))
        os.replace(tmp, path)
