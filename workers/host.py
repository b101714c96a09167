"""This PC's CPU, memory and disk, through psutil."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import psutil

from .records import GpuSample


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class HostSample:
    cpu_utilization: float  # 0..1 over all cores
    memory_used_bytes: int
    memory_total_bytes: int
    disk_used_bytes: int
    disk_total_bytes: int


def disk_path() -> str:
    return os.path.expanduser("~")


def sample_host() -> HostSample:
    mem = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path())
    return HostSample(
        # Non-blocking: the share since the previous call, i.e. since the last poll.
        cpu_utilization=psutil.cpu_percent(interval=None) / 100.0,
        memory_used_bytes=int(mem.total - mem.available),
        memory_total_bytes=int(mem.total),
        disk_used_bytes=int(disk.used),
        disk_total_bytes=int(disk.total),
    )


@dataclass
class Poll:
    """One poll of this PC: its own sample and each GPU's."""

    host: HostSample
    gpus: list[GpuSample]
