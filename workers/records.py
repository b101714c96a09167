"""Records the agent sends to the head. Plain dataclasses, JSON on the wire."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
    def from_dict(cls, data: dict) -> "HostInfo":
        gpus = [GpuInfo(**g) for g in data.get("gpus", [])]
        rest = {k: v for k, v in data.items() if k != "gpus"}
        return cls(gpus=gpus, **rest)
