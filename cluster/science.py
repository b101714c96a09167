"""Science batches on the coordinator: the BOINC-style store (jobs.science)
decides what is owed; this ships it to the Ray nodes in batches and brings
the reports back, in a thread of its own so dispatch never waits on the
coordinator's slower loop."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from jobs.science.records import GpuCaps, HostCaps, Report
from jobs.science.store import ScienceStore

from .api import ApiError

if TYPE_CHECKING:
    from .coordinator import Coordinator

TASK_SECONDS = 2.0  # aim each Ray task at this long, as a BOINC client sizes its work fetch
MAX_UNITS = 2000
IN_FLIGHT_PER_HOST = 2  # one running, one waiting on the node: no idle gap between them
SWEEP_EVERY_S = 5.0
POOL_REFRESH_S = 0.5


class Science:
    def __init__(self, coordinator: "Coordinator"):
        self.c = coordinator
        self.store = ScienceStore(coordinator.state.db_path, coordinator.state.path / "science")
        self.inflight: dict[object, tuple[str, str, list[int], float, int]] = {}  # ref -> host, node, ids, t0, n
        self.units: dict[str, int] = {}  # host -> units per task, adapted to its speed
        self.lock = threading.Lock()
        self.reported = 0
        self._pool_cache: tuple[list, dict[str, int]] = ([], {})
        self._pool_at = 0.0
        # Whatever was out when the head stopped will never be reported: hand it back, no penalty.
        for host in self.c.db.hosts():
            ids = self.store.in_progress(host.name)
            if ids:
                self.store.release(host.name, ids)

    def routes(self) -> dict:
        return {("POST", "/api/science/submit"): self.api_submit,
                ("POST", "/api/science/status"): self.api_status,
                ("POST", "/api/science/export"): self.api_export,
                ("POST", "/api/science/check"): self.api_check}

    # --- API ---
    def api_submit(self, body: dict) -> dict:
        app, params = body.get("app"), body.get("params")
        if not isinstance(params, list) or not params:
            raise ApiError(400, "params: expected a non-empty list of parameter objects")
        policy = {k: v for k, v in (body.get("policy") or {}).items() if v is not None}
        try:
            batch = self.store.submit(app, params, **policy)
        except (ValueError, TypeError) as err:
            raise ApiError(400, str(err).splitlines()[0]) from None
        self.c.log(f"science batch {batch} submitted: {len(params)} work units of {app}")
        return {"batch": batch}

    def api_status(self, body: dict) -> dict:
        batch = body.get("batch")
        if batch is None:
            return {"batches": self.store.batches(), "credit_by_host": self.store.credit_by_host(),
                    "credit_by_app": self.store.credit_by_app(), "hosts": self.store.host_stats()}
        try:
            return self.store.batch_status(int(batch))
        except (KeyError, ValueError, TypeError):
            raise ApiError(404, f"batch: no science batch {batch!r}") from None

    def api_check(self, _body: dict) -> dict:
        return {"violations": self.store.check_consistency()}

    def api_export(self, body: dict) -> dict:
        try:
            batch, fmt = int(body.get("batch")), body.get("format", "jsonl")
            status = self.store.batch_status(batch)
        except (KeyError, ValueError, TypeError):
            raise ApiError(404, f"batch: no science batch {body.get('batch')!r}") from None
        if fmt not in ("jsonl", "csv"):
            raise ApiError(400, f"format: expected csv or jsonl, got {fmt!r}")
        import io

        out = io.StringIO()
        self.store.export(batch, fmt, out)
        return {"text": out.getvalue(), "done": status["done"]}

    # --- dispatch ---
    def host_lost(self, name: str) -> None:
        self.store.host_lost(name)

    def _caps(self, row) -> HostCaps:
        info = row.info
        return HostCaps(name=row.name, cpu_only=info.cpu_only,
                        gpus=[GpuCaps(g.vram_bytes, float(g.compute_capability)) for g in info.gpus],
                        speed_gflops=info.speed_gflops)

    def _pool(self) -> tuple[list, dict[str, int]]:
        """Alive hosts in the order they get work, and who is training.

        Re-read twice a second, not at every dispatch: the dispatch loop turns
        many times a second and the head's other threads share the database.
        """
        now = time.monotonic()
        if now - self._pool_at > POOL_REFRESH_S:
            hosts = [r for r in self.c.db.hosts() if r.state == "alive"]
            # Fast and reliable hosts ask first, so they get the scarce work.
            hosts.sort(key=lambda r: -r.info.speed_gflops * self.store.host_reliability(r.name))
            self._pool_cache = (hosts, self.c.train.running_on())
            self._pool_at = now
        return self._pool_cache

    def dispatch(self) -> bool:
        """Hand work to every host with room; True if anything was sent."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        sent = False
        hosts, training = self._pool()
        out = {}
        for host, *_ in self.inflight.values():
            out[host] = out.get(host, 0) + 1
        for row in hosts:
            # Training comes first: a PC busy training gets no science on top.
            if out.get(row.name, 0) >= IN_FLIGHT_PER_HOST or training.get(row.name):
                continue
            node = self.c.node_of(row.name)
            if node is None:
                continue
            tasks = self.store.fetch_work(self._caps(row), self.units.get(row.name, 8))
            if not tasks:
                continue
            real_gpu = bool(row.info.gpus) and not row.info.simulated
            ref = self.c.remote_science.options(
                num_cpus=1, max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote([(t.result_id, t.wu_id, t.app, t.version, t.params_json) for t in tasks],
                     "cuda" if real_gpu else "cpu")
            self.inflight[ref] = (row.name, node["NodeID"], [t.result_id for t in tasks],
                                  time.monotonic(), len(tasks))
            sent = True
        return sent

    def collect(self, timeout: float) -> None:
        import ray

        if not self.inflight:
            time.sleep(timeout)
            return
        ready, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=timeout)
        for ref in ready:
            host, node_id, ids, t0, n = self.inflight.pop(ref)
            try:
                reports = [Report(*row) for row in ray.get(ref)]
            except ray.exceptions.RayError as err:
                # The node or worker died: its copies are no-replies, reissued elsewhere.
                self.c.log(f"science task on {host} failed ({type(err).__name__}); its work is reissued")
                if isinstance(err, (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError)):
                    self.c.dead_nodes.add(node_id)
                self.store.host_lost(host)
                continue
            self.store.report(host, reports)
            self.reported += len(reports)
            unreported = set(ids) - {r.result_id for r in reports}
            if unreported:
                self.store.release(host, list(unreported))
            took = max(time.monotonic() - t0, 1e-3)
            self.units[host] = max(1, min(MAX_UNITS, int(n * TASK_SECONDS / took)))

    def run(self) -> None:
        next_sweep = 0.0
        while not self.c.stopping.is_set():
            try:
                self.dispatch()
                self.collect(timeout=0.05)
                if time.monotonic() > next_sweep:
                    self.store.sweep()
                    next_sweep = time.monotonic() + SWEEP_EVERY_S
            except Exception as err:  # keep dispatching; the store's state is durable
                self.c.log(f"science loop error: {err!r}")
                time.sleep(1.0)

    def running_on(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for host, *_ in list(self.inflight.values()):
            out[host] = out.get(host, 0) + 1
        return out
