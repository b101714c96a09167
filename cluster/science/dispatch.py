"""Science on the head: the store (cluster.science.store) decides what is owed;
this ships it to the Ray nodes in batches and brings the reports back, in a
thread of its own so dispatch never waits on the coordinator's slower loop."""
from __future__ import annotations

import threading
import time
from typing import Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.head.hosts import HostRecords, HostRow
from cluster.head.raynodes import RayNodes
from jobs.science.tasks import Report
from workers.tasks.science import run_science_tasks

from .states import GpuCaps, HostCaps
from .store import ScienceStore
from .waiting import GpuView, HostView

TASK_SECONDS = 2.0  # aim each Ray task at this long, as a BOINC client sizes its work fetch
MAX_UNITS = 2000
FIRST_UNITS = 8
IN_FLIGHT_PER_HOST = 2  # one running, one waiting on the node: no idle gap between them
SWEEP_EVERY_S = 5.0
POOL_REFRESH_S = 0.5


def next_units(units: int, took_s: float) -> int:
    """Units per task for a host whose last task of `units` took `took_s`: as many
    as fill TASK_SECONDS at that pace, between 1 and MAX_UNITS."""
    return max(1, min(MAX_UNITS, int(units * TASK_SECONDS / max(took_s, 1e-3))))


def fair_share(unsent: int, hosts: int) -> int:
    """The most copies one task may take: an even slice of what is owed over every
    task slot of the alive hosts. A task size learned on a fast app (thousands of
    no-op units) would otherwise hand one host a whole batch of a slow one."""
    return max(1, -(-unsent // max(1, hosts * IN_FLIGHT_PER_HOST)))


def hosts_with_room(hosts: list[HostRow], out: dict[str, int], training: dict[str, int]) -> list[HostRow]:
    """The hosts that can take another science task now, in the order given:
    not training (training comes first), not paused, drained or unhealthy, and
    fewer than IN_FLIGHT_PER_HOST out."""
    return [r for r in hosts if out.get(r.name, 0) < IN_FLIGHT_PER_HOST and not training.get(r.name)
            and r.blocked(science=True) is None]


def host_caps(row: HostRow) -> HostCaps:
    """What the host offers science now: its GPUs that take work (none paused,
    drained, hot, lost or unhealthy)."""
    info = row.info
    usable = set(row.usable_gpus())
    gpus = [GpuCaps(g.vram_bytes, float(g.compute_capability)) for g in info.gpus if g.index in usable]
    return HostCaps(name=row.name, cpu_only=not gpus, gpus=gpus, speed_gflops=info.speed_gflops,
                    machine=row.machine or row.name)


def host_view(row: HostRow, training: bool, reachable: bool) -> HostView:
    """The host as `waiting` explains it: what keeps it, or any of its GPUs, from science.
    Science that stepped aside for training counts as training until the agent's next beat."""
    gpus = tuple(GpuView(g.index, g.name, g.vram_bytes, float(g.compute_capability), row.blocked(g.index))
                 for g in row.info.gpus)
    blocked = row.blocked(science=True) or (None if reachable else "its Ray node is not up yet")
    return HostView(row.name, row.machine or row.name, gpus, blocked,
                    training or row.paused.get("science") == "preempted")


class ScienceDispatch:
    """`training` says how many training workers each host runs now."""

    def __init__(self, store: ScienceStore, hosts: HostRecords, nodes: RayNodes,
                 training: Callable[[], dict[str, int]], log: Callable[[str], None], stopping: threading.Event,
                 on_failure: Callable[[str, str], None] = lambda host, why: None):
        self.on_failure = on_failure  # a task failed on a host (not its node dying)
        self.store = store
        self.hosts = hosts
        self.nodes = nodes
        self.training = training
        self.log = log
        self.stopping = stopping
        self.remote = ray.remote(run_science_tasks)
        self.inflight: dict[object, tuple[str, str, list[int], float, int]] = {}  # ref -> host, node, ids, t0, n
        self.units: dict[str, int] = {}  # host -> units per task, adapted to its speed
        self.reported = 0
        self._pool_cache: tuple[list, dict[str, int]] = ([], {})
        self._pool_at = 0.0
        # Whatever was out when the head stopped will never be reported: hand it back, no penalty.
        for host in self.hosts.all():
            ids = self.store.in_progress(host.name)
            if ids:
                self.store.release(host.name, ids)

    def host_lost(self, name: str) -> None:
        self.store.host_lost(name)

    def _pool(self) -> tuple[list[HostRow], dict[str, int]]:
        """Alive hosts in the order they get work, and who is training.

        Re-read twice a second, not at every dispatch: the dispatch loop turns
        many times a second and the head's other threads share the database.
        """
        now = time.monotonic()
        if now - self._pool_at > POOL_REFRESH_S:
            hosts = self.hosts.alive()
            # Fast and reliable hosts ask first, so they get the scarce work.
            hosts.sort(key=lambda r: -r.info.speed_gflops * self.store.host_reliability(r.name))
            self._pool_cache = (hosts, self.training())
            self._pool_at = now
        return self._pool_cache

    def dispatch(self) -> bool:
        """Hand work to every host with room; True if anything was sent."""
        sent = False
        hosts, training = self._pool()
        room = hosts_with_room(hosts, self.running_on(), training)
        share = fair_share(self.store.unsent_copies(), len(hosts)) if room else 0
        for row in room:
            node = self.nodes.alive(row.ray_node_id)
            if node is None:
                continue
            tasks = self.store.fetch_work(host_caps(row), min(share, self.units.get(row.name, FIRST_UNITS)))
            if not tasks:
                continue
            real_gpu = not row.info.simulated and 0 in row.usable_gpus()  # a task runs on GPU 0
            ref = self.remote.options(
                num_cpus=1, max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote([(t.result_id, t.wu_id, t.app, t.version, t.params_json) for t in tasks],
                     "cuda" if real_gpu else "cpu")
            self.inflight[ref] = (row.name, node["NodeID"], [t.result_id for t in tasks],
                                  time.monotonic(), len(tasks))
            sent = True
        return sent

    def collect(self, timeout: float) -> None:
        if not self.inflight:
            time.sleep(timeout)
            return
        refs = list(self.inflight)
        # Back as soon as one task is done, with every other that is: waiting for all
        # of them left the head idle while reports sat ready.
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and len(refs) > 1:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            host, node_id, ids, t0, n = self.inflight.pop(ref)
            try:
                reports = [Report(*row) for row in ray.get(ref)]
            except ray.exceptions.TaskCancelledError:
                self.store.release(host, ids)  # its batch was cancelled: nobody's fault
                continue
            except ray.exceptions.RayError as err:
                # The node or worker died: its copies are no-replies, reissued elsewhere.
                self.log(f"science task on {host} failed ({type(err).__name__}); its work is reissued")
                if isinstance(err, (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError)):
                    self.nodes.mark_dead(node_id)
                else:
                    self.on_failure(host, f"science task {type(err).__name__}")
                self.store.host_lost(host)
                continue
            self.store.report(host, reports)
            self.reported += len(reports)
            unreported = set(ids) - {r.result_id for r in reports}
            if unreported:
                self.store.release(host, list(unreported))
            self.units[host] = next_units(n, time.monotonic() - t0)

    def run(self) -> None:
        next_sweep = 0.0
        while not self.stopping.is_set():
            try:
                self.dispatch()
                self.collect(timeout=0.05)
                if time.monotonic() > next_sweep:
                    self.store.sweep()
                    next_sweep = time.monotonic() + SWEEP_EVERY_S
            except Exception as err:  # keep dispatching; the store's state is durable
                self.log(f"science loop error: {err!r}")
                time.sleep(1.0)

    def cancel(self, batch_id: int) -> dict[str, int]:
        """Cancel a batch and stop the tasks that hold only its units."""
        counts = self.store.cancel(batch_id)
        stopped = 0
        for ref, (_host, _node, ids, _t0, _n) in list(self.inflight.items()):
            if len(self.store.copies_of(batch_id, ids)) == len(ids):
                ray.cancel(ref)
                stopped += 1
        self.log(f"science batch {batch_id} cancelled: {counts['withdrawn']} units withdrawn, "
                 f"{counts['aborted']} copies stopped, {stopped} tasks told to stop")
        return {**counts, "tasks_stopped": stopped}

    def host_views(self) -> list[HostView]:
        """The alive hosts as science sees them now (read fresh: the API asks rarely)."""
        training = self.training()
        return [host_view(r, bool(training.get(r.name)), self.nodes.alive(r.ray_node_id) is not None)
                for r in self.hosts.alive()]

    def running_on(self) -> dict[str, int]:
        """Science tasks out per host."""
        out: dict[str, int] = {}
        for host, *_ in list(self.inflight.values()):
            out[host] = out.get(host, 0) + 1
        return out
