"""The owner's policy for their PC: when salvage may use it, and how much.

A TOML file (`worker join --policy FILE`), every key optional:

    [idle]
    minutes = 10              # run only after this long without keyboard, mouse or console input
    max_other_cpu = 0.25      # ... and while programs outside salvage use under this share of the CPU
    devices = ["/dev/input/event*", "/dev/tty[0-9]*", "/dev/pts/*"]   # where input shows (see idle.py)

    [windows]                 # local time; a day not named is open all day
    mon = ["18:00-08:00"]     # a window may pass midnight
    sat = "all"               # or "none"
    weekdays = ["19:00-07:00"]   # mon..fri at once; weekend = sat, sun

    [gpu]
    pause_above_c = 83        # pause a GPU at this temperature ...
    resume_below_c = 75       # ... and resume it only below this one
    power_cap_w = 150         # set through NVML where the driver permits it

    [limits]
    duty_cycle = 0.5          # work at most this share of the time (as --duty-cycle)
    max_ram_share = 0.6       # pause while salvage's processes hold more of the RAM than this

`Policy.load` checks every key and says which one is wrong in one line.
`PolicyState.decide` turns readings into what may run now, with the reasons,
and holds each decision long enough not to flap (hysteresis).
"""
from __future__ import annotations

import datetime as dt
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .idle import DEFAULT_DEVICES

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
GROUPS = {"weekdays": DAYS[:5], "weekend": DAYS[5:], "every_day": DAYS}
WINDOW_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)")
CPU_RESUME_FACTOR = 0.8  # resume only once others' CPU use falls this far under the limit
# Others' CPU use must stay past the mark this long to change the decision: quick to
# step aside for the owner, slow to come back, so a busy owner is not interrupted twice.
CPU_PAUSE_HOLD_S = 10.0
CPU_RESUME_HOLD_S = 60.0
# Why a PC or device is paused: a small fixed set, so metrics labels stay bounded.
REASONS = ("owner_input", "owner_cpu", "time_window", "gpu_hot", "ram", "idle_unknown", "operator", "drained",
           "unhealthy", "preempted")


class PolicyError(ValueError):
    """A bad policy file; `str()` is one line naming the key."""


@dataclass(frozen=True)
class Policy:
    idle_minutes: float | None = None
    max_other_cpu: float | None = None
    idle_devices: tuple[str, ...] = DEFAULT_DEVICES
    windows: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)  # day -> (start, end) minutes
    pause_above_c: float = 83.0
    resume_below_c: float = 75.0
    power_cap_w: float | None = None
    duty_cycle: float = 1.0
    max_ram_share: float | None = None

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as err:
            raise PolicyError(f"policy: cannot read {path} ({err.strerror or err})") from None
        except tomllib.TOMLDecodeError as err:
            raise PolicyError(f"policy: {path} is not valid TOML ({str(err).splitlines()[0]})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> Policy:
        _known(data, "", {"idle", "windows", "gpu", "limits"})
        idle = _table(data, "idle", {"minutes", "max_other_cpu", "devices"})
        gpu = _table(data, "gpu", {"pause_above_c", "resume_below_c", "power_cap_w"})
        limits = _table(data, "limits", {"duty_cycle", "max_ram_share"})
        windows = _windows(data.get("windows", {}))
        devices = idle.get("devices", list(DEFAULT_DEVICES))
        if not isinstance(devices, list) or not all(isinstance(d, str) and d.startswith("/") for d in devices):
            raise PolicyError("idle.devices: expected a list of absolute paths or globs")
        policy = cls(
            idle_minutes=_number(idle, "idle.minutes", 0, 24 * 60),
            max_other_cpu=_number(idle, "idle.max_other_cpu", 0.01, 1.0),
            idle_devices=tuple(devices), windows=windows,
            pause_above_c=_number(gpu, "gpu.pause_above_c", 30, 120, default=83.0),
            resume_below_c=_number(gpu, "gpu.resume_below_c", 20, 120, default=75.0),
            power_cap_w=_number(gpu, "gpu.power_cap_w", 10, 2000),
            duty_cycle=_number(limits, "limits.duty_cycle", 0.01, 1.0, default=1.0),
            max_ram_share=_number(limits, "limits.max_ram_share", 0.05, 1.0),
        )
        if policy.resume_below_c >= policy.pause_above_c:
            raise PolicyError(f"gpu.resume_below_c: expected below gpu.pause_above_c ({policy.pause_above_c:g})")
        return policy

    def describe(self) -> list[str]:
        """The policy in words, a line each."""
        lines = []
        if self.idle_minutes is not None:
            lines.append(f"runs only after {self.idle_minutes:g} min without keyboard, mouse or console input")
        if self.max_other_cpu is not None:
            lines.append(f"runs only while other programs use under {self.max_other_cpu:.0%} of the CPU")
        for day in DAYS:
            if day in self.windows:
                spans = ", ".join(f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}" for s, e in self.windows[day])
                lines.append(f"{day}: runs {spans or 'never'}")
        lines.append(f"a GPU pauses at {self.pause_above_c:g} °C and resumes below {self.resume_below_c:g} °C")
        if self.power_cap_w is not None:
            lines.append(f"GPU power capped at {self.power_cap_w:g} W")
        if self.duty_cycle < 1:
            lines.append(f"work runs at most {self.duty_cycle:.0%} of the time")
        if self.max_ram_share is not None:
            lines.append(f"pauses while salvage holds over {self.max_ram_share:.0%} of the RAM")
        return lines


def _known(data: dict, where: str, keys: set[str]) -> None:
    for key in data:
        if key not in keys:
            raise PolicyError(f"{where}{key}: unknown key (known: {', '.join(sorted(keys))})")


def _table(data: dict, name: str, keys: set[str]) -> dict:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise PolicyError(f"{name}: expected a table ([{name}])")
    _known(table, f"{name}.", keys)
    return table


def _number(table: dict, key: str, lo: float, hi: float, default: float | None = None) -> float | None:
    value = table.get(key.split(".")[-1], default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise PolicyError(f"{key}: expected a number from {lo:g} to {hi:g}, got {value!r}")
    return float(value)


def _windows(table) -> dict[str, tuple[tuple[int, int], ...]]:
    if not isinstance(table, dict):
        raise PolicyError("windows: expected a table ([windows])")
    out: dict[str, tuple[tuple[int, int], ...]] = {}
    for key, value in table.items():
        days = GROUPS.get(key, (key,))
        if days[0] not in DAYS:
            raise PolicyError(f"windows.{key}: unknown day (mon..sun, weekdays, weekend, every_day)")
        spans = _spans(f"windows.{key}", value)
        for day in days:
            out[day] = spans
    return out


def _spans(key: str, value) -> tuple[tuple[int, int], ...]:
    if value == "all":
        return ((0, 24 * 60),)
    if value == "none":
        return ()
    if not isinstance(value, list):
        raise PolicyError(f'{key}: expected "all", "none" or a list like ["18:00-08:00"]')
    spans = []
    for text in value:
        m = WINDOW_RE.fullmatch(text) if isinstance(text, str) else None
        if not m:
            raise PolicyError(f'{key}: expected HH:MM-HH:MM, got {text!r}')
        spans.append((int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])))
    return tuple(spans)


def in_window(policy: Policy, when: dt.datetime) -> bool:
    """Whether local time `when` falls in the policy's windows. A window that passes
    midnight (18:00-08:00) belongs to the day it starts on."""
    if not policy.windows:
        return True
    minute = when.hour * 60 + when.minute
    today, yesterday = DAYS[when.weekday()], DAYS[(when.weekday() - 1) % 7]
    for start, end in policy.windows.get(today, ((0, 24 * 60),)):
        if (start <= minute < end) if start < end else minute >= start:
            return True
    for start, end in policy.windows.get(yesterday, ((0, 24 * 60),)):
        if start > end and minute < end:  # last night's window, still open
            return True
    return False


@dataclass
class Readings:
    """What the agent measured for one decision."""

    now: float  # time.time()
    local: dt.datetime
    idle_s: float | None  # seconds since the last owner input; None: cannot be told
    other_cpu: float  # share of the CPU used outside salvage, 0-1
    ram_share: float  # share of the RAM salvage's processes hold
    gpu_temps: dict[int, float | None]


@dataclass
class Decision:
    host: str | None  # why the whole PC is paused, or None
    gpus: dict[int, str]  # paused GPUs and why
    detail: list[str]  # the reasons in words

    @property
    def running(self) -> bool:
        return self.host is None


class PolicyState:
    """Decisions with memory: a hot GPU stays paused until it cools below the
    lower mark, and others' CPU use must stay past its mark a while to change
    the decision either way."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.hot: set[int] = set()
        self.cpu_busy = False
        self.cpu_since: float | None = None  # when others' use first crossed the mark we are watching

    def reloaded(self, policy: Policy) -> PolicyState:
        """The same memory under the owner's new policy: a GPU paused hot stays paused
        until it cools below the (new) lower mark, and the CPU's hold keeps its clock."""
        state = PolicyState(policy)
        state.hot, state.cpu_busy, state.cpu_since = set(self.hot), self.cpu_busy, self.cpu_since
        return state

    def decide(self, r: Readings) -> Decision:
        p = self.policy
        host: list[tuple[str, str]] = []
        if p.idle_minutes is not None:
            if r.idle_s is None:
                host.append(("idle_unknown", "idle cannot be detected here (no readable input device, no logind); "
                                             "the owner asked for idle-only, so salvage waits"))
            elif r.idle_s < p.idle_minutes * 60:
                host.append(("owner_input", f"owner input {r.idle_s / 60:.1f} min ago "
                                            f"(runs after {p.idle_minutes:g} min idle)"))
        if p.max_other_cpu is not None and self._cpu_busy(r):
            host.append(("owner_cpu", f"other programs use {r.other_cpu:.0%} of the CPU "
                                      f"(limit {p.max_other_cpu:.0%})"))
        if not in_window(p, r.local):
            host.append(("time_window", f"outside the time windows ({DAYS[r.local.weekday()]} "
                                        f"{r.local:%H:%M})"))
        if p.max_ram_share is not None and r.ram_share > p.max_ram_share:
            host.append(("ram", f"salvage holds {r.ram_share:.0%} of the RAM (limit {p.max_ram_share:.0%})"))
        gpus = {}
        for index, temp in r.gpu_temps.items():
            if temp is None:
                continue
            if temp >= p.pause_above_c:
                self.hot.add(index)
            elif temp < p.resume_below_c:
                self.hot.discard(index)
            if index in self.hot:
                gpus[index] = "gpu_hot"
        detail = [text for _, text in host]
        detail += [f"GPU {i} at {r.gpu_temps[i]:.0f} °C: paused until below {p.resume_below_c:g} °C"
                   for i in sorted(gpus)]
        return Decision(host[0][0] if host else None, gpus, detail)

    def _cpu_busy(self, r: Readings) -> bool:
        limit = self.policy.max_other_cpu
        crossing = r.other_cpu < limit * CPU_RESUME_FACTOR if self.cpu_busy else r.other_cpu > limit
        if not crossing:
            self.cpu_since = None
        elif self.cpu_since is None:
            self.cpu_since = r.now
        elif r.now - self.cpu_since >= (CPU_RESUME_HOLD_S if self.cpu_busy else CPU_PAUSE_HOLD_S):
            self.cpu_busy, self.cpu_since = not self.cpu_busy, None
        return self.cpu_busy
