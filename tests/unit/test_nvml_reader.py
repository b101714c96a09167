"""The NVML layer against a scripted stand-in that follows pynvml's API
(same functions, constants, and NVMLError codes), and against the real
pynvml on this GPU-less machine."""
from types import SimpleNamespace

import pynvml
import pytest

from workers.gpus import GpuReader, open_nvml
from workers.records import GpuSample


class ScriptedNvml:
    """pynvml as a driver with these cards would answer, including failures."""

    NVMLError = pynvml.NVMLError

    def __init__(self, cards, init_error=None, ecc=False):
        self.cards = cards
        self.init_error = init_error
        self.ecc = ecc
        self.events: list[int] = []

    def __getattr__(self, name):
        return getattr(pynvml, name)  # constants

    def _card(self, handle):
        card = self.cards[handle.index]
        if card.get("lost"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return card

    def nvmlInit(self):
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlSystemGetDriverVersion(self):
        return "535.183.01"

    def nvmlDeviceGetCount(self):
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, i):
        return SimpleNamespace(index=i)

    def nvmlDeviceGetName(self, h):
        return self._card(h)["name"]

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h.index:08x}-aaaa-bbbb"

    def nvmlDeviceGetMemoryInfo(self, h):
        c = self._card(h)
        return SimpleNamespace(total=c["vram"], used=c.get("used", 0), free=c["vram"] - c.get("used", 0))

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self._card(h)["cc"]

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return self._card(h)["limit_mw"]

    def nvmlDeviceGetPowerUsage(self, h):
        return self._card(h)["power_mw"]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return 3

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return 16

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._card(h)["temp"]

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self._card(h)["util"], memory=10)

    def nvmlDeviceGetFanSpeed(self, h):
        c = self._card(h)
        if c.get("fan") is None:  # passive cooling: NVML says Not Supported
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return c["fan"]

    def nvmlDeviceGetClockInfo(self, h, clock):
        assert clock == pynvml.NVML_CLOCK_SM
        return self._card(h)["sm_mhz"]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self._card(h).get("reasons", 0)

    def nvmlDeviceGetEccMode(self, h):
        self._card(h)
        if not self.ecc:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return (1, 1)

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter_type):
        return 2

    def nvmlEventSetCreate(self):
        return object()

    def nvmlDeviceRegisterEvents(self, h, types, event_set):
        assert types == pynvml.nvmlEventTypeXidCriticalError

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        if not self.events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        index = self.events.pop(0)
        # The real library hands back a new handle object for the device.
        return SimpleNamespace(device=SimpleNamespace(index=index), eventData=79,
                               eventType=pynvml.nvmlEventTypeXidCriticalError)


def two_cards():
    return [
        dict(name="NVIDIA GeForce GTX 1060 3GB", vram=3 * 2**30, cc=(6, 1), limit_mw=120_000,
             power_mw=60_500, temp=71, util=55, fan=40, sm_mhz=1708),
        dict(name="NVIDIA GeForce RTX 3060", vram=12 * 2**30, cc=(8, 6), limit_mw=170_000,
             power_mw=150_000, temp=88, util=99, fan=None, sm_mhz=1320,
             reasons=pynvml.nvmlClocksEventReasonSwThermalSlowdown | pynvml.nvmlClocksEventReasonSwPowerCap),
    ]


def started(nvml) -> GpuReader:
    reader = GpuReader(nvml)
    reader.start()
    return reader


def test_a_pc_with_two_different_gpus_shows_both():
    gpus = started(ScriptedNvml(two_cards())).probe()
    assert [(g.name, g.vram_bytes, g.compute_capability) for g in gpus] == [
        ("NVIDIA GeForce GTX 1060 3GB", 3 * 2**30, "6.1"), ("NVIDIA GeForce RTX 3060", 12 * 2**30, "8.6")]
    assert gpus[0].uuid != gpus[1].uuid
    assert gpus[1].power_limit_w == 170.0 and gpus[0].driver == "535.183.01"
    assert (gpus[0].pcie_gen, gpus[0].pcie_width) == (3, 16)


def test_live_readings_in_base_units():
    s1, s2 = started(ScriptedNvml(two_cards())).sample()
    assert s1.temperature_c == 71 and s1.utilization == pytest.approx(0.55)
    assert s1.power_w == pytest.approx(60.5) and s1.sm_clock_hz == 1708e6 and s1.fan_ratio == 0.4
    assert s2.fan_ratio is None  # a passive card has no fan reading, and that is not an error
    assert s2.throttle == {"power_cap": True, "sw_thermal": True, "hw_thermal": False, "hw_slowdown": False}
    assert s1.ecc_errors is None  # consumer card: no ECC


def test_ecc_errors_are_read_where_the_card_has_ecc():
    s1, _ = started(ScriptedNvml(two_cards(), ecc=True)).sample()
    assert s1.ecc_errors == 2


def test_missing_library_means_cpu_only_with_a_note():
    reader = started(ScriptedNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert reader.probe() == [] and reader.sample() == []
    assert "CPU-only" in reader.notes[0]


def test_a_gpu_that_falls_off_the_bus_reads_as_lost_and_the_others_go_on():
    cards = two_cards()
    reader = started(ScriptedNvml(cards))
    cards[0]["lost"] = True
    lost, other = reader.sample()
    assert lost == GpuSample(index=0, lost=True)
    assert not other.lost and other.temperature_c == 88


def test_xid_events_are_counted_per_gpu():
    nvml = ScriptedNvml(two_cards())
    reader = started(nvml)
    nvml.events += [1, 1, 0]
    reader.sample()
    assert reader.xid_errors == {0: 1, 1: 2}


def test_the_real_pynvml_on_a_pc_without_a_driver_is_cpu_only():
    reader = started(open_nvml(None))
    try:
        pynvml.nvmlInit()
        has_driver = True
    except pynvml.NVMLError:
        has_driver = False
    if has_driver:
        assert reader.probe()  # a real GPU box: the real path reads real cards
    else:
        assert reader.probe() == [] and reader.notes and "CPU-only" in reader.notes[0]
