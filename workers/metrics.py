"""The agent's /metrics: one collector that renders the latest poll.

Series carry no `host` label: Prometheus adds it from the head's service
discovery, so a renamed PC never leaves stale series behind here.
"""
from __future__ import annotations

from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .gpus import THROTTLE_REASONS, GpuReader
from .host import Poll
from .pauses import Pauses
from .policy import REASONS
from .records import HostInfo

AGENT_STATES = ("starting", "idle", "busy", "paused", "leaving")


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"salvage_{name}", doc, labels=labels or [])


class AgentReadings(Protocol):
    """What the collector reads from the agent at each scrape."""

    host_info: HostInfo
    last_poll: Poll | None  # None before the first poll
    state: str
    speeds: dict[str, float]
    gpu_reader: GpuReader
    pauses: Pauses | None


class AgentCollector:
    def __init__(self, agent: AgentReadings):
        self.agent = agent

    def describe(self):
        return []  # no registration-time collect: the first poll may not have run

    def collect(self):
        agent = self.agent
        poll = agent.last_poll
        yield from self._gpu_metrics(agent)
        if poll is not None:
            host = poll.host
            for name, doc, value in (
                ("host_cpu_utilization_ratio", "CPU busy share over all cores, 0-1.", host.cpu_utilization),
                ("host_memory_used_bytes", "RAM in use.", host.memory_used_bytes),
                ("host_memory_total_bytes", "RAM installed.", host.memory_total_bytes),
                ("host_disk_used_bytes", "Disk used on the agent's home filesystem.", host.disk_used_bytes),
                ("host_disk_total_bytes", "Disk size of the agent's home filesystem.", host.disk_total_bytes),
            ):
                g = _gauge(name, doc)
                g.add_metric([], value)
                yield g
        state = _gauge("agent_state", "The agent's state, one-hot.", ["state"])
        for s in AGENT_STATES:
            state.add_metric([s], 1.0 if agent.state == s else 0.0)
        yield state
        paused = agent.pauses.state if agent.pauses else None
        host = _gauge("agent_paused", "1 while the whole PC is paused, by reason (owner, window, operator...).",
                      ["reason"])
        gpus = _gauge("gpu_paused", "1 while the GPU takes no work, by reason (hot, unhealthy, operator...).",
                      ["gpu", "reason"])
        for reason in REASONS:  # every reason, 0 or 1: "not paused" is a value a panel can show
            host.add_metric([reason], 1.0 if paused is not None and paused.host == reason else 0.0)
        if paused is not None:
            for index, reason in sorted(paused.gpus.items()):
                gpus.add_metric([str(index), reason], 1.0)
        yield host
        yield gpus
        speed = _gauge("device_speed_flops", "Measured fp32 matmul rate per device, FLOP/s.", ["device"])
        for device, gflops in agent.speeds.items():
            speed.add_metric([device], gflops * 1e9)
        yield speed

    def _gpu_metrics(self, agent: AgentReadings):
        info = _gauge("gpu_info", "GPU identity.", ["gpu", "uuid", "model", "compute_capability", "driver"])
        for g in agent.host_info.gpus:
            info.add_metric([str(g.index), g.uuid, g.name, g.compute_capability, g.driver], 1.0)
        yield info
        samples = agent.last_poll.gpus if agent.last_poll else []
        lost = _gauge("gpu_lost", "1 when the GPU has fallen off the bus.", ["gpu"])
        fields = (
            ("temperature_c", "gpu_temperature_celsius", "GPU core temperature."),
            ("utilization", "gpu_utilization_ratio", "GPU busy share, 0-1."),
            ("memory_used_bytes", "gpu_memory_used_bytes", "GPU memory in use."),
            ("memory_total_bytes", "gpu_memory_total_bytes", "GPU memory installed."),
            ("power_w", "gpu_power_watts", "GPU power draw."),
            ("power_limit_w", "gpu_power_limit_watts", "GPU power limit."),
            ("fan_ratio", "gpu_fan_ratio", "GPU fan speed, 0-1 of its maximum."),
            ("sm_clock_hz", "gpu_sm_clock_hertz", "GPU SM clock."),
        )
        families = {attr: _gauge(name, doc, ["gpu"]) for attr, name, doc in fields}
        throttle = _gauge("gpu_throttle", "1 while the clock is held down for this reason.", ["gpu", "reason"])
        ecc = CounterMetricFamily("salvage_gpu_ecc_errors", "Uncorrected ECC errors (cards with ECC).", labels=["gpu"])
        xid = CounterMetricFamily("salvage_gpu_xid_errors", "Xid critical error events seen by NVML.", labels=["gpu"])
        for s in samples:
            gpu = str(s.index)
            lost.add_metric([gpu], 1.0 if s.lost else 0.0)
            xid.add_metric([gpu], agent.gpu_reader.xid_errors.get(s.index, 0))
            if s.lost:
                continue
            for attr, family in families.items():
                value = getattr(s, attr)
                if value is not None:
                    family.add_metric([gpu], value)
            if s.throttle:
                for reason in THROTTLE_REASONS:
                    throttle.add_metric([gpu, reason], 1.0 if s.throttle.get(reason) else 0.0)
            if s.ecc_errors is not None:
                ecc.add_metric([gpu], s.ecc_errors)
        yield lost
        yield from families.values()
        yield throttle
        yield ecc
        yield xid
