"""A stand-in for the `pynvml` module, for PCs without NVIDIA GPUs.

It offers the subset of pynvml's functions that `workers.gpus` calls, with the
same signatures, constants and `NVMLError` classes, so simulated GPUs go
through exactly the code path real ones do; only this lowest layer differs.

A SPEC is either a list like ``"GTX 1060:3GB:6.1,RTX 3060:12GB:8.6"`` or
``@file.json``. The file is re-read whenever it changes, so a test can heat a
GPU up or make it fall off the bus while the agent runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pynvml

# Reuse the real module's error type and constants: callers catch
# `nvml.NVMLError` and compare `err.value` with pynvml's codes.
NVMLError = pynvml.NVMLError
NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC

_LIVE_FIELDS = {"temperature_c", "utilization", "power_w", "fan_ratio", "lost",
                "memory_used", "throttle", "power_limit_w", "gflops", "xid_errors", "ecc_errors",
                "power_cap_permitted"}
_THROTTLE_BITS = {
    "power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "sw_thermal": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "hw_thermal": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
}
# A simulated card starts thermal slowdown here, as consumer cards do near 83-87 °C.
SIM_SLOWDOWN_C = 87.0


class SpecError(ValueError):
    """A malformed --simulate-gpus SPEC."""


@dataclass
class SimGpu:
    name: str
    vram_bytes: int
    cc: str
    temperature_c: float = 40.0
    utilization: float = 0.0
    power_w: float = 25.0
    power_limit_w: float = 120.0
    fan_ratio: float = 0.3
    memory_used: int = 0
    lost: bool = False
    throttle: list[str] = field(default_factory=list)
    gflops: float | None = None
    xid_errors: int = 0
    ecc_errors: int | None = None  # None: a card without ECC, as consumer cards are
    power_cap_permitted: bool = True  # False: as a driver answers a user who is not root


def parse_size(text: str, where: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise SpecError(f"{where}: expected a size like '12GB', got {text!r}")
    unit = m.group(2).upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * 1024 ** ("KMGT".index(unit) + 1))


def _parse_cc(text: str, where: str) -> str:
    if not re.fullmatch(r"\d+\.\d", str(text).strip()):
        raise SpecError(f"{where}: expected a compute capability like '8.6', got {text!r}")
    return str(text).strip()


def _gpu_from_obj(obj: object, where: str) -> SimGpu:
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: expected an object with name, vram and cc")
    missing = [k for k in ("name", "vram", "cc") if k not in obj]
    if missing:
        raise SpecError(f"{where}.{missing[0]}: required field is missing")
    unknown = set(obj) - {"name", "vram", "cc"} - _LIVE_FIELDS
    if unknown:
        raise SpecError(f"{where}.{sorted(unknown)[0]}: unknown field")
    gpu = SimGpu(name=str(obj["name"]), vram_bytes=parse_size(str(obj["vram"]), f"{where}.vram"),
                 cc=_parse_cc(obj["cc"], f"{where}.cc"))
    for key in _LIVE_FIELDS & set(obj):
        value = obj[key]
        if key in ("lost", "power_cap_permitted"):
            if not isinstance(value, bool):
                raise SpecError(f"{where}.{key}: expected true or false, got {value!r}")
        elif key == "throttle":
            if not isinstance(value, list) or not set(value) <= set(_THROTTLE_BITS):
                raise SpecError(f"{where}.throttle: expected a list of {sorted(_THROTTLE_BITS)}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SpecError(f"{where}.{key}: expected a number, got {value!r}")
        elif key in ("utilization", "fan_ratio") and not 0 <= value <= 1:
            raise SpecError(f"{where}.{key}: expected a number from 0 to 1, got {value!r}")
        setattr(gpu, key, value)
    return gpu


def parse_spec(spec: str) -> list[SimGpu]:
    """Parse an inline SPEC (``NAME:VRAM:CC,...``); empty means no GPUs."""
    gpus = []
    for i, item in enumerate(p for p in spec.split(",") if p.strip()):
        parts = item.split(":")
        if len(parts) != 3:
            raise SpecError(f"simulate-gpus[{i}]: expected NAME:VRAM:CC like 'RTX 3060:12GB:8.6', got {item!r}")
        name, vram, cc = (p.strip() for p in parts)
        if not name:
            raise SpecError(f"simulate-gpus[{i}].name: must not be empty")
        gpus.append(SimGpu(name=name, vram_bytes=parse_size(vram, f"simulate-gpus[{i}].vram"),
                           cc=_parse_cc(cc, f"simulate-gpus[{i}].cc")))
    return gpus


def read_spec_file(path: Path) -> list[SimGpu]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"simulate-gpus: file {path} does not exist") from None
    except (OSError, ValueError) as err:
        raise SpecError(f"simulate-gpus: {path} is not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise SpecError(f"simulate-gpus: {path} must hold a JSON list of GPU objects")
    return [_gpu_from_obj(obj, f"simulate-gpus[{i}]") for i, obj in enumerate(data)]


def check_spec(spec: str) -> None:
    """Raise SpecError now, at the command line, rather than later in the agent."""
    SimulatedNvml(spec).nvmlInit()


class SimulatedNvml:
    """Module-like object with pynvml's API over simulated GPUs."""

    NVMLError = NVMLError

    def __init__(self, spec: str):
        self._path = Path(spec[1:]) if spec.startswith("@") else None
        self._inline = spec if self._path is None else ""
        self._mtime: float | None = None
        self._gpus: list[SimGpu] = []

    def __getattr__(self, name: str):
        # Constants and anything else not simulated come from the real module.
        return getattr(pynvml, name)

    def _refresh(self) -> None:
        if self._path is None:
            return
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._mtime or mtime is None:
            fresh = read_spec_file(self._path)
            # Index and identity are fixed at init; only live values change.
            if self._gpus and len(fresh) == len(self._gpus):
                self._gpus = fresh
            elif not self._gpus:
                self._gpus = fresh
            self._mtime = mtime

    def _gpu(self, handle) -> SimGpu:
        gpu = self._gpus[handle.index]
        if gpu.lost:
            raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    # --- the pynvml surface used by workers.gpus ---
    def nvmlInit(self) -> None:
        if self._path is None:
            self._gpus = parse_spec(self._inline)
        else:
            self._refresh()

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "simulated"

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int):
        if index == 0:
            self._refresh()  # once per poll, not once per call
        if not 0 <= index < len(self._gpus):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle) -> str:
        gpu = self._gpu(handle)
        digest = hashlib.sha1(f"{handle.index}:{gpu.name}:{gpu.vram_bytes}".encode()).hexdigest()
        return f"GPU-sim-{digest[:8]}-{digest[8:12]}-{digest[12:16]}"

    def nvmlDeviceGetMemoryInfo(self, handle):
        gpu = self._gpu(handle)
        used = min(gpu.memory_used, gpu.vram_bytes)
        return SimpleNamespace(total=gpu.vram_bytes, used=used, free=gpu.vram_bytes - used)

    def nvmlDeviceGetCudaComputeCapability(self, handle) -> tuple[int, int]:
        major, minor = self._gpu(handle).cc.split(".")
        return int(major), int(minor)

    def nvmlDeviceGetPowerManagementLimit(self, handle) -> int:
        return int(self._gpu(handle).power_limit_w * 1000)

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        return int(self._gpu(handle).power_w * 1000)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle) -> int:
        self._gpu(handle)
        return 3

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle) -> int:
        self._gpu(handle)
        return 16

    def nvmlDeviceGetTemperature(self, handle, sensor: int) -> int:
        return int(round(self._gpu(handle).temperature_c))

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=int(round(self._gpu(handle).utilization * 100)), memory=0)

    def nvmlDeviceGetFanSpeed(self, handle) -> int:
        return int(round(self._gpu(handle).fan_ratio * 100))

    def nvmlDeviceGetClockInfo(self, handle, clock: int) -> int:
        gpu = self._gpu(handle)
        return 1200 if self._reasons(gpu) else 1800

    def _reasons(self, gpu: SimGpu) -> int:
        reasons = set(gpu.throttle)
        if gpu.temperature_c >= SIM_SLOWDOWN_C:
            reasons.add("sw_thermal")
        bits = 0
        for reason in reasons:
            bits |= _THROTTLE_BITS[reason]
        return bits

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle) -> int:
        return self._reasons(self._gpu(handle))

    def nvmlDeviceGetEccMode(self, handle):
        # Consumer cards, which is what gets donated, have no ECC; a spec may give one.
        if self._gpu(handle).ecc_errors is None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return (1, 1)

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type: int, counter_type: int) -> int:
        return int(self._gpu(handle).ecc_errors or 0)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle) -> tuple[int, int]:
        self._gpu(handle)
        return 50_000, 500_000

    def nvmlDeviceSetPowerManagementLimit(self, handle, milliwatts: int) -> None:
        gpu = self._gpu(handle)
        if not gpu.power_cap_permitted:
            raise NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        gpu.power_limit_w = milliwatts / 1000

    # Xid errors arrive as NVML events; the file's `xid_errors` count is
    # turned into one event per increase.
    def nvmlEventSetCreate(self):
        return SimpleNamespace(seen={}, handles={})

    def nvmlDeviceRegisterEvents(self, handle, event_types: int, event_set) -> None:
        event_set.handles[handle.index] = handle
        event_set.seen[handle.index] = self._gpus[handle.index].xid_errors

    def nvmlEventSetWait_v2(self, event_set, timeout_ms: int):
        self._refresh()
        for index, handle in event_set.handles.items():
            count = self._gpus[index].xid_errors
            if count > event_set.seen[index]:
                event_set.seen[index] += 1
                return SimpleNamespace(device=handle, eventType=pynvml.nvmlEventTypeXidCriticalError,
                                       eventData=79, gpuInstanceId=0, computeInstanceId=0)
        raise NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set) -> None:
        pass
