"""Lend this PC's idle devices to the volunteer-compute client the owner runs,
and take them back when salvage's own work arrives.

The agent calls `update(busy)` every poll with which of its devices salvage
is using ("cpu", "gpu0", ...). A resource in use is held: the client is told
to stop using it ("never") for a lease that each poll renews. A resource idle
for `idle_s` is given back with the owner's own setting. Holds are temporary
modes, never the client's permanent one, so a crashed agent or one restarted
without `--boinc` hands everything back within one lease by itself.

Nothing here raises into the agent: a failure becomes `note` (one line) and
the next call tries again.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from .compute import RESOURCES, ClientError, ComputeClient, ModeState, Overview, ProjectInfo

HOLD_REASONS = ("work", "paused")  # bounded: they label metrics


@dataclass(frozen=True)
class Hold:
    """A resource salvage has taken from the client, and why."""

    mode: str  # the mode salvage set ("never")
    reason: str  # one of HOLD_REASONS
    detail: str  # for people: "gpu0 busy", "paused: GPU too hot"


@dataclass
class BoincStatus:
    """A snapshot for /metrics and the head."""

    kind: str
    connected: bool = False
    note: str = ""  # one line; empty while all is well
    modes: dict[str, str] = field(default_factory=dict)  # resource -> mode in effect now
    owner_modes: dict[str, ModeState] = field(default_factory=dict)  # what the owner set
    held: dict[str, Hold] = field(default_factory=dict)
    holds_total: dict[str, int] = field(default_factory=dict)  # times salvage took each resource
    projects: list[ProjectInfo] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)


def resource_of(device: str) -> str | None:
    """The client resource a salvage device uses: "cpu" -> cpu, "gpu0" -> gpu."""
    if device == "cpu":
        return "cpu"
    if device.startswith("gpu"):
        return "gpu"
    return None


@dataclass
class _Owner:
    """The owner's setting and when it was read, so a running snooze can be aged."""

    mode: ModeState
    read_at: float

    def aged(self, now: float) -> ModeState:
        left = self.mode.temp_left_s - (now - self.read_at) if self.mode.temp_left_s > 0 else 0.0
        return replace(self.mode, temp_left_s=max(0.0, left))


class BoincManager:
    """Drives one `ComputeClient` (BOINC's `BoincRpc` today). update/pause/resume/stop
    come from one thread (the agent's poll loop); status() may come from any."""

    def __init__(self, client: ComputeClient, idle_s: float = 60.0, lease_s: float = 120.0,
                 overview_every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.idle_s = idle_s
        self.lease_s = lease_s
        self.overview_every_s = overview_every_s
        self._clock = clock  # real time, for leases; `now` given to update() is the agent's idle clock
        self._lock = threading.Lock()  # the agent's poll thread writes, the /metrics thread reads
        self._status = BoincStatus(kind=client.kind, holds_total=dict.fromkeys(RESOURCES, 0))
        self._owner: dict[str, _Owner] = {}
        self._lease_until: dict[str, float] = {}  # resource -> when salvage's last hold ends
        self._last_busy: dict[str, float] = {}
        self._busy: dict[str, str] = {}  # resource -> the devices keeping it busy, for people
        self._paused: str | None = None
        self._next_overview = 0.0
        self._stopped = False

    # --- what the agent calls ---
    def update(self, busy: Mapping[str, bool], now: float | None = None) -> None:
        """Salvage's device use now; holds and gives back resources to match."""
        now = time.monotonic() if now is None else now

        def step():
            using: dict[str, list[str]] = {}
            for device, is_busy in busy.items():
                resource = resource_of(str(device))
                if resource and is_busy:
                    using.setdefault(resource, []).append(str(device))
            for resource, devices in using.items():
                self._last_busy[resource] = now
                self._busy[resource] = ", ".join(sorted(devices)) + " busy"
            self._apply(now)
        self._guarded(step)

    def pause(self, reason: str, now: float | None = None) -> None:
        """The owner's policy paused this PC: the client stops too."""
        self._paused = reason
        self._guarded(lambda: self._apply(time.monotonic() if now is None else now))

    def resume(self, now: float | None = None) -> None:
        """The pause is over; the client gets its resources back once they have been idle `idle_s`."""
        now = time.monotonic() if now is None else now
        if self._paused is not None:
            for resource in RESOURCES:
                self._last_busy[resource] = now
        self._paused = None
        self._guarded(lambda: self._apply(now))

    def stop(self) -> None:
        """Salvage stops managing the client: every held resource goes back to the owner's setting."""
        def give_all():
            for resource in list(self._status.held):
                self._give_back(resource)
        if self._status.held:  # what cannot be given back now ends with its lease anyway
            self._guarded(give_all)
        self._stopped = True
        self._close_client()
        with self._lock:
            self._status.connected = False

    def status(self) -> BoincStatus:
        with self._lock:
            s = self._status
            return replace(s, modes=dict(s.modes), owner_modes=dict(s.owner_modes), held=dict(s.held),
                           holds_total=dict(s.holds_total), projects=list(s.projects), tasks=dict(s.tasks))

    # --- inside ---
    def _guarded(self, step: Callable[[], None]) -> None:
        if self._stopped:
            return
        try:
            step()
        except ClientError as err:
            self._failed(str(err))
        except Exception as err:  # a bug here must not stop the agent; say it and go on
            self._failed(f"{self.client.kind}: internal error: {type(err).__name__}: {err}".splitlines()[0])
        else:
            with self._lock:
                self._status.connected = True
                self._status.note = ""

    def _close_client(self) -> None:
        try:
            self.client.close()
        except Exception:  # best effort: a half-closed connection is reopened on the next call anyway
            pass

    def _failed(self, note: str) -> None:
        self._close_client()
        with self._lock:
            self._status.connected = False
            self._status.note = note
            self._status.modes = {}

    def _wanted(self, now: float) -> dict[str, Hold | None]:
        wanted: dict[str, Hold | None] = {}
        for resource in RESOURCES:
            if self._paused is not None:
                wanted[resource] = Hold(self.client.suspended, "paused", f"paused: {self._paused}")
                continue
            last = self._last_busy.get(resource)
            if last is not None and now - last < self.idle_s:
                wanted[resource] = Hold(self.client.suspended, "work", self._busy.get(resource, "busy"))
            else:
                wanted[resource] = None
        return wanted

    def _apply(self, now: float) -> None:
        modes = self.client.modes()
        for resource, mode in modes.items():
            self._learn_owner(resource, mode)
        with self._lock:
            self._status.modes = {r: m.current for r, m in modes.items()}
        for resource, hold in self._wanted(now).items():
            if resource not in modes:
                continue
            held = self._status.held.get(resource)
            if hold is not None:
                if self._needs_hold(modes[resource]):
                    self.client.hold(resource, self.lease_s)
                    self._lease_until[resource] = self._clock() + self.lease_s
                with self._lock:
                    if held is None:
                        self._status.holds_total[resource] += 1
                    self._status.held[resource] = hold
                    self._status.modes[resource] = self.client.suspended
            elif held is not None:
                self._give_back(resource)
        if self._clock() >= self._next_overview:
            self._refresh_overview()

    def _needs_hold(self, mode: ModeState) -> bool:
        """Whether the client must be told (again): not if it already stays off long enough,
        whether by salvage's lease, the owner's snooze or the owner's own "never"."""
        if mode.current != self.client.suspended:
            return True
        if mode.temp_left_s <= 0:
            return mode.perm != self.client.suspended
        return mode.temp_left_s < self.lease_s / 2

    def _learn_owner(self, resource: str, mode: ModeState) -> None:
        """Whatever the client shows that salvage did not set is the owner's setting:
        read at start, and again whenever the owner changes it by hand."""
        now = self._clock()
        owner = self._owner.get(resource)
        if owner is None or resource not in self._status.held or not self._is_ours(resource, mode, owner, now):
            self._owner[resource] = _Owner(mode, now)
        with self._lock:
            self._status.owner_modes[resource] = self._owner[resource].aged(now)

    def _is_ours(self, resource: str, mode: ModeState, owner: _Owner, now: float) -> bool:
        until = self._lease_until.get(resource)
        if until is None:
            return False  # salvage set nothing: what shows is the owner's
        if mode.current != self.client.suspended or mode.perm != owner.mode.perm or mode.temp_left_s <= 0:
            return False  # set by hand (a permanent set also ends salvage's temporary mode)
        # A temporary "never" ending when salvage's lease ends is salvage's; one ending
        # elsewhere is the owner's snooze. The client's clock ticks in steps of about a second.
        return abs((now + mode.temp_left_s) - until) <= 3.0

    def _give_back(self, resource: str) -> None:
        owner = self._owner.get(resource)
        if owner is not None:
            restored = owner.aged(self._clock())
            self.client.give_back(resource, restored)
            with self._lock:
                self._status.modes[resource] = restored.current if restored.temp_left_s >= 1.0 else restored.perm
        self._lease_until.pop(resource, None)
        with self._lock:
            self._status.held.pop(resource, None)

    def _refresh_overview(self) -> None:
        overview: Overview = self.client.overview()
        self._next_overview = self._clock() + self.overview_every_s
        with self._lock:
            self._status.projects = list(overview.projects)
            self._status.tasks = dict(overview.tasks)
