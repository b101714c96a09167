"""Records the agent sends to the head. Plain dataclasses, JSON on the wire.

The head trusts none of it: `HostInfo.from_dict` checks every field by type and
range and raises `RecordError` naming the first bad one, so a broken or lying
PC's record is refused whole and nothing of it is stored.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
CC_RE = re.compile(r"\d{1,2}\.\d")
MAX_GPUS = 16
MAX_TEXT = 300
MAX_NOTES = 20


class RecordError(ValueError):
    """A record from a PC that cannot be taken; `str()` is one line naming the field."""


@dataclass
class GpuInfo:
    """What a GPU is (probed once at join)."""

    index: int
    uuid: str
    name: str
    vram_bytes: int
    compute_capability: str  # "8.6": kept as text so "7.5" never becomes 7.4999
    driver: str
    power_limit_w: float | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    speed_gflops: float | None = None
    problem: str | None = None  # why it cannot take work (a torch without its kernels), with the fix


@dataclass
class GpuSample:
    """What a GPU is doing now (read at every poll)."""

    index: int
    lost: bool = False
    temperature_c: float | None = None
    utilization: float | None = None  # 0..1
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    fan_ratio: float | None = None  # 0..1
    sm_clock_hz: float | None = None
    throttle: dict[str, bool] = field(default_factory=dict)
    ecc_errors: int | None = None  # None: the card has no ECC


@dataclass
class HostInfo:
    """What a PC is, as registered with the coordinator."""

    name: str
    cpu_model: str
    cpu_cores: int
    ram_bytes: int
    disk_bytes: int
    gpus: list[GpuInfo]
    cpu_gflops: float | None = None
    notes: list[str] = field(default_factory=list)
    simulated: bool = False
    duty_cycle: float = 1.0  # the owner lets work run this fraction of wall time
    machine_id: str = ""  # the PC's /etc/machine-id: one PC running several names is still one PC

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    @property
    def speed_gflops(self) -> float:
        """The host's measured speed: its GPUs' sum, or its CPU when it has none."""
        gpu_speeds = [g.speed_gflops or 0.0 for g in self.gpus]
        return sum(gpu_speeds) if self.gpus else (self.cpu_gflops or 0.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> HostInfo:
        """A checked HostInfo from a PC's JSON, or RecordError."""
        body = _object(data, "host", cls)
        gpus = body.get("gpus", [])
        if not isinstance(gpus, list) or len(gpus) > MAX_GPUS:
            raise RecordError(f"host.gpus: expected a list of at most {MAX_GPUS} GPUs")
        checked = [_gpu(g, i) for i, g in enumerate(gpus)]
        notes = body.get("notes", [])
        if not isinstance(notes, list) or len(notes) > MAX_NOTES or not all(isinstance(n, str) for n in notes):
            raise RecordError(f"host.notes: expected a list of at most {MAX_NOTES} lines of text")
        name = _text(body, "name", "host")
        if not NAME_RE.fullmatch(name):
            raise RecordError(f"host.name: expected letters, digits, '-', '_' or '.' (at most 63), got {name[:70]!r}")
        return cls(
            name=name, cpu_model=_text(body, "cpu_model", "host"),
            cpu_cores=_int(body, "cpu_cores", "host", 1, 4096),
            ram_bytes=_int(body, "ram_bytes", "host", 0, 2**50),
            disk_bytes=_int(body, "disk_bytes", "host", 0, 2**60),
            gpus=checked, cpu_gflops=_number(body, "cpu_gflops", "host", 0.0, 1e6, optional=True),
            notes=[n[:500] for n in notes], simulated=_bool(body, "simulated", "host", False),
            duty_cycle=_number(body, "duty_cycle", "host", 0.0, 1.0, default=1.0, above=True),
            machine_id=_text(body, "machine_id", "host", default="", pattern=r"[A-Za-z0-9_.:-]{0,100}"),
        )


def _object(data: Any, where: str, kind: type) -> dict:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected an object, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(kind)})
    if unknown:
        raise RecordError(f"{where}.{unknown[0][:40]}: unknown field")
    return data


def _gpu(data: Any, position: int) -> GpuInfo:
    where = f"host.gpus[{position}]"
    body = _object(data, where, GpuInfo)
    if _int(body, "index", where, 0, MAX_GPUS - 1) != position:
        raise RecordError(f"{where}.index: expected {position} (GPUs in index order)")
    cc = _text(body, "compute_capability", where)
    if not CC_RE.fullmatch(cc):
        raise RecordError(f"{where}.compute_capability: expected a version like '8.6', got {cc[:20]!r}")
    return GpuInfo(
        index=position, uuid=_text(body, "uuid", where), name=_text(body, "name", where),
        vram_bytes=_int(body, "vram_bytes", where, 0, 2**42), compute_capability=cc,
        driver=_text(body, "driver", where),
        power_limit_w=_number(body, "power_limit_w", where, 0.0, 5000.0, optional=True),
        pcie_gen=_int(body, "pcie_gen", where, 1, 16, optional=True),
        pcie_width=_int(body, "pcie_width", where, 1, 64, optional=True),
        speed_gflops=_number(body, "speed_gflops", where, 0.0, 1e7, optional=True),
        problem=_text(body, "problem", where) if body.get("problem") is not None else None,
    )


def _text(body: dict, key: str, where: str, default: str | None = None, pattern: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise RecordError(f"{where}.{key}: expected text of at most {MAX_TEXT} characters")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise RecordError(f"{where}.{key}: expected {pattern}, got {value[:40]!r}")
    return value


def _int(body: dict, key: str, where: str, lo: int, hi: int, optional: bool = False) -> int | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RecordError(f"{where}.{key}: expected an integer from {lo} to {hi}, got {value!r:.40}")
    return value


def _number(body: dict, key: str, where: str, lo: float, hi: float, optional: bool = False,
            default: float | None = None, above: bool = False) -> float | None:
    value = body.get(key, default)
    if value is None and optional:
        return None
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (lo < value if above else lo <= value) and value <= hi)
    if not ok:
        raise RecordError(f"{where}.{key}: expected a number from {lo:g} to {hi:g}, got {value!r:.40}")
    return float(value)


def _bool(body: dict, key: str, where: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise RecordError(f"{where}.{key}: expected true or false, got {value!r:.40}")
    return value
