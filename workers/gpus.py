"""Every NVIDIA GPU of this PC, through NVML (`pynvml`, from nvidia-ml-py).

`GpuReader` is written against the pynvml module's API; it is handed either
the real module or `workers.simnvml.SimulatedNvml`. A PC without NVML (no
driver, no library) is a CPU-only worker with a note, never a crash; a GPU
that falls off the bus reports `lost` instead of failing the poll.
"""
from __future__ import annotations

from .records import GpuInfo, GpuSample

THROTTLE_REASONS = ("power_cap", "sw_thermal", "hw_thermal", "hw_slowdown")


def open_nvml(simulate: str | None):
    """The NVML module to use: the simulator when a SPEC is given, else pynvml."""
    if simulate is not None:
        from .simnvml import SimulatedNvml

        return SimulatedNvml(simulate)
    import pynvml

    return pynvml


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuReader:
    def __init__(self, nvml):
        self.nvml = nvml
        self.handles: list = []
        self.notes: list[str] = []
        self._events = None
        self.xid_errors: dict[int, int] = {}
        self.errors: dict[int, int] = {}  # NVML errors other than "lost", per GPU, since start
        self._started = False

    def start(self) -> None:
        """Initialise NVML; without it, this is a CPU-only PC."""
        nvml = self.nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as err:
            self.handles = []
            self.notes.append(f"no NVIDIA GPU usable (NVML: {err}); this PC joins as CPU-only")
            return
        self._started = True
        self.xid_errors = {i: 0 for i in range(len(self.handles))}
        self._register_xid_events()

    def _register_xid_events(self) -> None:
        nvml = self.nvml
        try:
            self._events = nvml.nvmlEventSetCreate()
            for handle in self.handles:
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self._events)
        except nvml.NVMLError as err:
            self._events = None
            self.notes.append(f"Xid events unavailable ({err})")

    def probe(self) -> list[GpuInfo]:
        nvml = self.nvml
        if not self._started:
            return []
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index, handle in enumerate(self.handles):
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(GpuInfo(
                index=index,
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
                vram_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                compute_capability=f"{major}.{minor}",
                driver=driver,
                power_limit_w=self._optional(nvml.nvmlDeviceGetPowerManagementLimit, handle, 1e-3),
                pcie_gen=self._optional(nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
                pcie_width=self._optional(nvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
            ))
        return gpus

    def set_power_cap(self, watts: float) -> str | None:
        """Cap every GPU's power at `watts` (within what each card allows); None when
        set, else why not, in one line (setting it needs root on most drivers)."""
        nvml = self.nvml
        for index, handle in enumerate(self.handles):
            try:
                low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
                nvml.nvmlDeviceSetPowerManagementLimit(handle, int(min(max(watts * 1000, low), high)))
            except nvml.NVMLError as err:
                return f"GPU {index}: NVML says {err}"
        return None

    def _optional(self, fn, handle, scale: float = 1.0, *args):
        """A reading some cards do not support (fan on a passive card, ECC...)."""
        try:
            value = fn(handle, *args)
        except self.nvml.NVMLError as err:
            if err.value == self.nvml.NVML_ERROR_GPU_IS_LOST:
                raise
            return None
        return value * scale if scale != 1.0 else value

    def sample(self) -> list[GpuSample]:
        """Live readings of every GPU; a lost GPU shows as lost, one whose reading
        failed otherwise shows no readings this time, and the others read on."""
        samples = []
        for index in range(len(self.handles)):
            try:
                # Looked up anew each poll: cheap, and it is where a simulated
                # device list re-reads its file.
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                samples.append(self._sample_one(index, handle))
            except self.nvml.NVMLError as err:
                lost = err.value == self.nvml.NVML_ERROR_GPU_IS_LOST
                if not lost:  # a transient error (busy driver, timeout): this poll has no readings
                    self.errors[index] = self.errors.get(index, 0) + 1
                samples.append(GpuSample(index=index, lost=lost))
        self._drain_xid_events()
        return samples

    def _sample_one(self, index: int, handle) -> GpuSample:
        nvml = self.nvml
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        util = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        fan = self._optional(nvml.nvmlDeviceGetFanSpeed, handle)
        reasons = self._optional(nvml.nvmlDeviceGetCurrentClocksEventReasons, handle)
        bits = {
            "power_cap": nvml.nvmlClocksEventReasonSwPowerCap,
            "sw_thermal": nvml.nvmlClocksEventReasonSwThermalSlowdown,
            "hw_thermal": nvml.nvmlClocksEventReasonHwThermalSlowdown,
            "hw_slowdown": nvml.nvmlClocksEventReasonHwSlowdown,
        }
        return GpuSample(
            index=index,
            temperature_c=float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
            utilization=None if util is None else util.gpu / 100.0,
            memory_used_bytes=int(mem.used),
            memory_total_bytes=int(mem.total),
            power_w=self._optional(nvml.nvmlDeviceGetPowerUsage, handle, 1e-3),
            power_limit_w=self._optional(nvml.nvmlDeviceGetPowerManagementLimit, handle, 1e-3),
            fan_ratio=None if fan is None else fan / 100.0,
            sm_clock_hz=self._optional(nvml.nvmlDeviceGetClockInfo, handle, 1e6, nvml.NVML_CLOCK_SM),
            throttle={} if reasons is None else {k: bool(reasons & b) for k, b in bits.items()},
            ecc_errors=self._ecc_errors(handle),
        )

    def _ecc_errors(self, handle) -> int | None:
        nvml = self.nvml
        mode = self._optional(nvml.nvmlDeviceGetEccMode, handle)
        if not mode or not mode[0]:
            return None
        return self._optional(nvml.nvmlDeviceGetTotalEccErrors, handle, 1.0,
                              nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC)

    def _drain_xid_events(self) -> None:
        """Count Xid critical errors that arrived since the last poll (no waiting)."""
        if self._events is None:
            return
        nvml = self.nvml
        handle_index = {id(h): i for i, h in enumerate(self.handles)}
        while True:
            try:
                event = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError:
                return  # timeout: nothing pending
            index = handle_index.get(id(event.device))
            if index is None:  # the real library hands back a fresh handle object
                index = self._index_of(event.device)
            if index is not None:
                self.xid_errors[index] = self.xid_errors.get(index, 0) + 1

    def _index_of(self, device) -> int | None:
        try:
            uuid = _text(self.nvml.nvmlDeviceGetUUID(device))
            return next(i for i, h in enumerate(self.handles)
                        if _text(self.nvml.nvmlDeviceGetUUID(h)) == uuid)
        except (self.nvml.NVMLError, StopIteration):
            return None
