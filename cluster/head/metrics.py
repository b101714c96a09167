"""The head's /metrics: fleet state from SQLite and Ray's resource view."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cluster.science.store import ScienceStore

from .hosts import HostRecords
from .raynodes import RayNodes

HOST_STATES = ("alive", "lost", "left")
RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
JOB_STATES = ("queued", "running", "done", "failed", "stopped")


@dataclass
class FleetView:
    """What the head's metrics read, each from the part that owns it."""

    hosts: HostRecords
    nodes: RayNodes
    train_jobs: Callable[[], list[dict]]
    training_on: Callable[[], dict[str, int]]
    store: ScienceStore
    science_on: Callable[[], dict[str, int]]
    science_reported: Callable[[], int]


class HeadCollector:
    def __init__(self, view: FleetView):
        self.view = view

    def describe(self):
        return []

    def collect(self):
        c = self.view
        rows = c.hosts.all()
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

        host_up = GaugeMetricFamily("salvage_host_up", "1 if the host is alive, 0 if lost (hosts that left are absent).",
                                    labels=["host"])
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

        yield from self._train(c)
        yield from self._science(c)

        total, free = c.nodes.resources
        rt = GaugeMetricFamily("salvage_ray_resource_total", "Ray resources in the cluster.", labels=["resource"])
        ru = GaugeMetricFamily("salvage_ray_resource_used", "Ray resources in use.", labels=["resource"])
        for res in RAY_RESOURCES:
            if res in total:
                rt.add_metric([res], total[res])
                ru.add_metric([res], total[res] - free.get(res, 0.0))
        yield rt
        yield ru

    def _train(self, c: FleetView):
        jobs = c.train_jobs()
        by_state = Counter(j["state"] for j in jobs)
        family = GaugeMetricFamily("salvage_jobs", "Jobs by kind and state.", labels=["kind", "state"])
        for state in JOB_STATES:
            family.add_metric(["train", state], by_state[state])
        batches = c.store.batches()
        family.add_metric(["science", "running"], sum(not b["done"] for b in batches))
        family.add_metric(["science", "done"], sum(b["done"] for b in batches))
        yield family
        running = GaugeMetricFamily("salvage_host_running", "Tasks running on the host.", labels=["host", "kind"])
        for host, n in c.training_on().items():
            running.add_metric([host, "train"], n)
        for host, n in c.science_on().items():
            running.add_metric([host, "science"], n)
        yield running
        # Only running jobs: a finished job is not "making no progress".
        it = GaugeMetricFamily("salvage_train_iteration", "Last reported iteration.", labels=["job_id"])
        loss = GaugeMetricFamily("salvage_train_loss", "Last reported loss.", labels=["job_id", "split"])
        rate = GaugeMetricFamily("salvage_train_tokens_per_second", "Training throughput per worker.",
                                 labels=["job_id", "worker"])
        seen = GaugeMetricFamily("salvage_train_last_progress_timestamp_seconds",
                                 "When the job last reported progress (Unix time).", labels=["job_id"])
        for j in jobs:
            if j["state"] != "running" or not j["progress_json"]:
                continue
            p, job_id = json.loads(j["progress_json"]), str(j["id"])
            it.add_metric([job_id], p.get("iter", 0))
            for split in ("train", "val"):
                if p.get(f"{split}_loss") is not None:
                    loss.add_metric([job_id, split], p[f"{split}_loss"])
            if p.get("workers"):  # a pool job: one series per worker
                for w in p["workers"]:
                    rate.add_metric([job_id, w["worker"]], w["tokens_per_s"])
            elif p.get("tokens_per_s") is not None:
                rate.add_metric([job_id, j["host"]], p["tokens_per_s"])
            seen.add_metric([job_id], j["progress_at"])
        yield it
        yield loss
        yield rate
        yield seen

    def _science(self, c: FleetView):
        store = c.store
        batches = store.batches()
        units = Counter()
        for b in batches:
            units["done"] += b["done_wus"]
            units["error"] += b["error_wus"]
            if not b["done"]:
                wus = store.batch_status(b["batch"])["wus"]
                units["in_progress"] += wus["in_progress"]
                units["unsent"] += wus["unsent"]
        family = GaugeMetricFamily("salvage_science_workunits", "Work units by state.", labels=["state"])
        for state in ("unsent", "in_progress", "done", "error"):
            family.add_metric([state], units[state])
        yield family
        per_host = Counter()
        for h in store.host_stats():
            per_host[(h["host"], "valid")] += h["valid"]
            per_host[(h["host"], "invalid")] += h["invalid"]
        results = CounterMetricFamily("salvage_science_results", "Validated results by host and outcome.",
                                      labels=["host", "validate_state"])
        for (host, state), n in sorted(per_host.items()):
            results.add_metric([host, state], n)
        yield results
        credit = CounterMetricFamily("salvage_science_credit", "Credit granted, in cobblestones.", labels=["host"])
        for host, value in sorted(store.credit_by_host().items()):
            credit.add_metric([host], value)
        yield credit
        reported = CounterMetricFamily("salvage_science_results_reported", "Results received from workers.")
        reported.add_metric([], c.science_reported())
        yield reported


class PoolMetrics:
    """What the rounds of multi-worker jobs cost, updated by their round loops."""

    def __init__(self, registry: CollectorRegistry):
        self.round_seconds = Gauge("salvage_train_round_duration_seconds", "Wall time of the job's last round.",
                                   ["job_id"], registry=registry)
        self.wait = PromCounter("salvage_train_wait_seconds", "Time a worker waited for the others at round ends.",
                                ["job_id", "worker"], registry=registry)
        self.bytes = PromCounter("salvage_train_bytes", "Bytes of parameters and deltas moved for the job.",
                                 ["job_id", "direction"], registry=registry)

    def round(self, job_id: int, seconds: float) -> None:
        self.round_seconds.labels(str(job_id)).set(seconds)

    def worker_round(self, job_id: int, worker: str, wait_s: float, up: int, down: int) -> None:
        self.wait.labels(str(job_id), worker).inc(wait_s)
        self.bytes.labels(str(job_id), "up").inc(up)
        self.bytes.labels(str(job_id), "down").inc(down)
