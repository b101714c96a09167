"""The head's /metrics: fleet state from SQLite and Ray's resource view."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from .coordinator import Coordinator

HOST_STATES = ("alive", "lost", "left")
RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class HeadCollector:
    def __init__(self, coordinator: "Coordinator"):
        self.coordinator = coordinator

    def describe(self):
        return []

    def collect(self):
        c = self.coordinator
        rows = c.db.hosts()
        up = GaugeMetricFamily("salvage_coordinator_up", "1 while the coordinator serves.")
        up.add_metric([], 1.0)
        yield up

        by_state = Counter(r.state for r in rows)
        hosts = GaugeMetricFamily("salvage_hosts", "Hosts known to the head, by state.", labels=["state"])
        for state in HOST_STATES:
            hosts.add_metric([state], by_state[state])
        yield hosts

        models = Counter(g.name for r in rows if r.state == "alive" for g in r.info.gpus)
        gpus = GaugeMetricFamily("salvage_gpus", "GPUs on alive hosts, by model.", labels=["model"])
        for model, n in sorted(models.items()):
            gpus.add_metric([model], n)
        yield gpus

        host_up = GaugeMetricFamily("salvage_host_up", "1 if the host is alive, 0 if lost (hosts that left are absent).", labels=["host"])
        speed = GaugeMetricFamily("salvage_host_speed_flops", "The host's measured FLOP/s.", labels=["host"])
        ngpus = GaugeMetricFamily("salvage_host_gpus", "GPUs the host registered with.", labels=["host"])
        for r in rows:
            if r.state == "left":
                continue  # removed on purpose: not "down", so no series to alert on
            host_up.add_metric([r.name], 1.0 if r.state == "alive" else 0.0)
            speed.add_metric([r.name], r.info.speed_gflops * 1e9)
            ngpus.add_metric([r.name], len(r.info.gpus))
        yield host_up
        yield speed
        yield ngpus

        total, free = c.ray_resources
        rt = GaugeMetricFamily("salvage_ray_resource_total", "Ray resources in the cluster.", labels=["resource"])
        ru = GaugeMetricFamily("salvage_ray_resource_used", "Ray resources in use.", labels=["resource"])
        for res in RAY_RESOURCES:
            if res in total:
                rt.add_metric([res], total[res])
                ru.add_metric([res], total[res] - free.get(res, 0.0))
        yield rt
        yield ru
