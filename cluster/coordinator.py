"""The coordinator: the head's daemon. It owns the Ray head node (as a child),
is a Ray driver, keeps the durable state in SQLite, and serves the HTTP API.

`salvage cluster up` starts it detached; systemd runs it with `--foreground`.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram

from workers.raynode import NO_LOG_MONITOR, RayNode, die_with_parent, node_ports_args, port_in_use, ray_env, start_lock
from workers.records import HostInfo

from .api import ApiError, serve
from .db import Database
from .headmetrics import HeadCollector, PoolMetrics
from .prometheus import command, write_config
from .science import Science
from .trainjobs import TrainJobs
from .state import HeadConfig, StateDir

LOST_AFTER_S = 20.0  # an agent beats every 5 s; three missed beats and it is lost
LOOP_INTERVAL_S = 1.0
HOST_LABEL = "salvage.io/host"


class Coordinator:
    def __init__(self, state: StateDir, config: HeadConfig):
        self.state = state
        self.config = config
        self.epoch = time.time()  # tells agents this head (and its Ray cluster) is a new one
        self.token = state.token() if config.auth else None
        if self.token:
            # Before Ray is imported: it reads its auth settings once.
            os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.db = Database(state.db_path)
        self.ray_lock = threading.Lock()
        self.ray_nodes: list[dict] = []
        # Nodes a task saw die. Ray lists a dead node as alive for 10-20 s more, and
        # anything placed there meanwhile is lost with it (science units, a job's start).
        self.dead_nodes: set[str] = set()
        self.ray_resources: tuple[dict, dict] = ({}, {})
        self.stopping = threading.Event()
        self.registry = CollectorRegistry()
        self.loop_seconds = Histogram(
            "salvage_coordinator_loop_duration_seconds", "Time one coordinator loop pass takes.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0), registry=self.registry)
        self.registry.register(HeadCollector(self))
        self.pool_metrics = PoolMetrics(self.registry)
        self.head_node: RayNode | None = None
        self.prometheus: subprocess.Popen | None = None
        self.science_thread: threading.Thread | None = None
        self.routes = {
            ("GET", "/api/cluster"): self.api_cluster,
            ("GET", "/api/status"): self.api_status,
            ("POST", "/api/hosts/check"): self.api_check,
            ("POST", "/api/hosts/register"): self.api_register,
            ("POST", "/api/hosts/heartbeat"): self.api_heartbeat,
            ("POST", "/api/hosts/leave"): self.api_leave,
        }
        self.train = TrainJobs(self)
        self.routes.update(self.train.routes())
        self.stream_routes = self.train.stream_routes()
        self.science = Science(self)
        self.routes.update(self.science.routes())

    def log(self, message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)

    # --- Ray ---
    def start_head(self) -> None:
        c = self.config
        args = ["--head", "--port", str(c.ray_port), "--node-ip-address", c.host,
                "--num-cpus", "0",  # the head schedules; the PCs compute
                "--dashboard-host", c.host, "--dashboard-port", str(c.dashboard_port),
                "--ray-client-server-port", str(c.client_port), *node_ports_args(c.host), *NO_LOG_MONITOR]
        store = os.environ.get("SALVAGE_RAY_OBJECT_STORE_BYTES")
        if store:
            args += ["--object-store-memory", store]
        self._forget_last_head()
        self.head_node = RayNode(args, ray_env(self.token), self.state.logs / "ray-head.log")
        self.head_node.start()

    def start_prometheus(self) -> None:
        out = self.state.path / "prometheus"
        config = write_config(out, self.config.api_address)
        listen = f"{self.config.host}:{self.config.prometheus_port}"
        with open(self.state.logs / "prometheus.log", "ab") as log:
            self.prometheus = subprocess.Popen(command(config, out / "data", listen), stdout=log,
                                               stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self.log(f"Prometheus on http://{listen} (config {config})")

    def _forget_last_head(self) -> None:
        """`ray start --head` refuses a port when the last head it started there
        is named by a live process with `--gcs-address`: on one machine, the
        agents' raylets still waiting for the old head. Ray only keeps that
        "last head" in a hint file (for address="auto", unused here)."""
        hint = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        try:
            if hint.read_text().strip() == self.config.ray_address:
                hint.unlink()
        except OSError:
            pass

    def connect_ray(self, timeout: float = 90.0) -> None:
        import ray

        deadline = time.monotonic() + timeout
        while True:
            if not self.head_node.alive():
                raise RuntimeError(f"the Ray head exited: {self.head_node.log_tail(1)}")
            if not port_in_use(self.config.host, self.config.ray_port):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Ray head did not open its port")
                time.sleep(0.3)  # GCS not listening yet: ray.init would block far longer
                continue
            try:
                ray.init(address=self.config.ray_address, log_to_driver=False,
                         logging_level="ERROR", namespace="salvage")
                from .sciencerun import run_science_tasks
                from .trainrun import run_train_job

                self.remote_train_job = ray.remote(run_train_job)
                self.remote_science = ray.remote(run_science_tasks)
                return
            except Exception as err:  # GCS not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not connect to the Ray head: {err}") from None
                time.sleep(1.0)

    def refresh_ray(self) -> None:
        import ray

        with self.ray_lock:
            nodes = ray.nodes()
            total, free = ray.cluster_resources(), ray.available_resources()
        self.ray_nodes = nodes
        self.ray_resources = (total, free)

    def node_of(self, host: str) -> dict | None:
        for node in self.ray_nodes:
            if node.get("Alive") and node.get("Labels", {}).get(HOST_LABEL) == host \
                    and node["NodeID"] not in self.dead_nodes:
                return node
        return None

    # --- API ---
    def api_cluster(self, _body: dict) -> dict:
        return {"ray_address": self.config.ray_address, "auth": self.config.auth, "epoch": self.epoch}

    def api_status(self, _body: dict) -> dict:
        nodes = []
        running: dict[str, list[str]] = {}
        for job in self.train.jobs():
            if job["state"] == "running":
                running.setdefault(job["host"], []).append(f"train job {job['id']}")
        for host, n in self.science.running_on().items():
            running.setdefault(host, []).append(f"science ({n} task{'s' if n > 1 else ''})")
        for row in self.db.hosts():
            info = row.info
            ray_node = self.node_of(row.name) if row.state == "alive" else None
            nodes.append({
                "name": row.name, "state": row.state, "cpu_only": info.cpu_only,
                "speed_gflops": round(info.speed_gflops, 1),
                "cpu": {"model": info.cpu_model, "cores": info.cpu_cores, "ram_bytes": info.ram_bytes},
                "gpus": [{"index": g.index, "name": g.name, "vram_bytes": g.vram_bytes,
                          "compute_capability": g.compute_capability, "uuid": g.uuid,
                          "speed_gflops": g.speed_gflops, "lost": g.index in row.lost_gpus}
                         for g in info.gpus],
                "running": running.get(row.name, []),
                "ray_labels": {k: v for k, v in (ray_node or {}).get("Labels", {}).items()
                               if k.startswith("salvage.io/")},
                "metrics": row.metrics_addr, "last_seen": row.last_seen,
                "simulated": info.simulated, "notes": info.notes,
            })
        return {"nodes": nodes, "head": self.config.api_address, "ray": self.config.ray_address}

    def api_check(self, body: dict) -> dict:
        name = _field(body, "name", str)
        row = self.db.host(name)
        if row and row.state == "alive" and row.agent_id != body.get("agent_id"):
            raise ApiError(409, f"name: an agent named {name!r} is already in the cluster; "
                                "stop it first or join with another --name")
        return {"ok": True}

    def api_register(self, body: dict) -> dict:
        try:
            info = HostInfo.from_dict(_field(body, "host", dict))
        except TypeError as err:
            raise ApiError(400, f"host: malformed host record ({err})") from None
        agent_id = _field(body, "agent_id", str)
        self.api_check({"name": info.name, "agent_id": agent_id})
        node = self.node_of(info.name)
        if node is None:
            self.refresh_ray()
            node = self.node_of(info.name)
        if node is None:
            raise ApiError(425, f"ray: no live Ray node labelled {HOST_LABEL}={info.name} yet")
        self.db.upsert_host(info, agent_id, body.get("metrics_addr"), node["NodeID"])
        self.log(f"host {info.name} joined ({len(info.gpus)} GPU(s), {info.speed_gflops:.0f} GFLOP/s)")
        return {"ok": True}

    def api_heartbeat(self, body: dict) -> dict:
        name = _field(body, "name", str)
        lost = [int(i) for i in body.get("lost_gpus", []) if isinstance(i, int)]
        if not self.db.heartbeat(name, _field(body, "agent_id", str), lost):
            raise ApiError(404, f"name: {name!r} is not registered here")
        return {"running": self.train.running_on().get(name, 0) + self.science.running_on().get(name, 0),
                "epoch": self.epoch}

    def api_leave(self, body: dict) -> dict:
        name = _field(body, "name", str)
        if self.db.set_state(name, "left", _field(body, "agent_id", str)):
            self.log(f"host {name} left")
        return {"ok": True}

    def sd_targets(self) -> list[dict]:
        return [{"targets": [row.metrics_addr], "labels": {"host": row.name}}
                for row in self.db.hosts() if row.state == "alive" and row.metrics_addr]

    # --- the loop ---
    def tick(self) -> None:
        with self.loop_seconds.time():
            self.refresh_ray()
            for name in self.db.mark_silent_lost(time.time() - LOST_AFTER_S):
                self.log(f"host {name} lost (no heartbeat for {LOST_AFTER_S:.0f} s)")
                self.science.host_lost(name)
            for row in self.db.hosts():
                if row.state == "alive" and self.node_of(row.name) is None \
                        and time.time() - row.joined_at > LOST_AFTER_S:
                    self.db.set_state(row.name, "lost")
                    self.log(f"host {row.name} lost (its Ray node is gone)")
                    self.science.host_lost(row.name)
            self.train.step()

    def run(self) -> int:
        self.state.pid_file.write_text(str(os.getpid()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        server = None
        try:
            with start_lock():
                self.start_head()
                try:
                    self.connect_ray()
                except RuntimeError as err:
                    # On a loaded machine `ray start --head` now and then gives up waiting
                    # for its own raylet; a second start usually comes up in seconds.
                    if not self.head_node.alive():
                        self.log(f"{err}; starting the Ray head once more")
                        self.head_node.kill()
                        self.start_head()
                        self.connect_ray()
                    else:
                        raise
            server = serve(self, self.config.host, self.config.http_port)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.science_thread = threading.Thread(target=self.science.run, daemon=True, name="science")
            self.science_thread.start()
            if self.config.prometheus_port:
                self.start_prometheus()
            self.log(f"coordinator ready: API on {self.config.api_address}, Ray on {self.config.ray_address}")
            while not self.stopping.is_set():
                try:
                    self.tick()
                except Exception as err:  # keep serving; the next pass may succeed
                    self.log(f"loop error: {err!r}")
                if not self.head_node.alive():
                    self.log("the Ray head exited; stopping")
                    return 1
                self.stopping.wait(LOOP_INTERVAL_S)
            return 0
        finally:
            if server:
                server.shutdown()
            self.shutdown()

    def shutdown(self) -> None:
        self.stopping.set()
        if self.science_thread is not None:
            self.science_thread.join(10)
        self.science.store.close()
        self.db.close()
        if self.prometheus is not None:
            self.prometheus.terminate()
            self.prometheus.wait(15)
        if self.head_node:
            # No drain: what ran is durable in SQLite and is reissued after `up`,
            # and a head killed whole frees its ports at once for the next `up`.
            self.log("stopping the Ray head")
            self.head_node.kill()
        self.state.pid_file.unlink(missing_ok=True)
        self.log("coordinator stopped")


def _field(body: dict, name: str, kind: type):
    value = body.get(name)
    if not isinstance(value, kind):
        raise ApiError(400, f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.coordinator")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    state = StateDir(args.state_dir)
    config = state.read_head()
    if config is None:
        print(f"state-dir: no head.json in {state.path}; run `salvage cluster up`", file=sys.stderr)
        return 2
    return Coordinator(state, config).run()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Skip Ray's exit hooks: with the head gone they can wait on it for minutes.
    os._exit(code)
