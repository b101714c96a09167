"""The coordinator: the head's daemon. It owns the Ray head node (as a child),
is a Ray driver, keeps the durable state in SQLite, and serves the HTTP API.

This module is the head's composition root and lifecycle: it builds every
service with the collaborators it needs, starts the Ray head, the HTTP server
and the threads, runs the loop and shuts it all down. Nothing imports it.
`salvage cluster up` starts it as `python -m cluster.head` (see __main__).
"""
from __future__ import annotations

import os
import platform
import signal
import subprocess
import tempfile
import threading
import time
from importlib.metadata import version as package_version
from pathlib import Path

import ray
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from cluster.science.api import ScienceApi
from cluster.science.dispatch import ScienceDispatch
from cluster.science.store import ScienceStore
from cluster.train.records import JobRecords
from cluster.train.service import TrainJobs
from workers.raynode import (
    HEAD_NODE_PORTS,
    NO_LOG_MONITOR,
    RayNode,
    die_with_parent,
    node_ports_args,
    port_in_use,
    ray_env,
    start_lock,
)

from . import alertmanager, raytls, tls
from .boinc import BoincFleet
from .db import Database
from .hosts import HostRecords, HostsApi
from .http import Route, serve
from .metrics import FleetView, HeadCollector, PoolMetrics
from .page import CONTENT_TYPE, StatusPage
from .prometheus import command, write_config
from .raynodes import RayNodes
from .state import HeadConfig, StateDir

LOOP_INTERVAL_S = 1.0
VERSIONS = {"python": platform.python_version(), "ray": ray.__version__, "salvage": package_version("salvage-cluster")}


class Coordinator:
    def __init__(self, state: StateDir, config: HeadConfig):
        self.state = state
        self.config = config
        self.token = state.token()
        self.tls = tls.ensure(state.tls_dir, config.host) if config.lan else None
        self.stopping = threading.Event()
        self.head_node: RayNode | None = None
        self.prometheus: subprocess.Popen | None = None
        self.alertmanager: subprocess.Popen | None = None
        self.threads: list[threading.Thread] = []

        self.db = Database(state.db_path)
        self.nodes = RayNodes()
        self.hosts = HostRecords(self.db)
        self.registry = CollectorRegistry()
        self.loop_seconds = Histogram(
            "salvage_coordinator_loop_duration_seconds", "Time one coordinator loop pass takes.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0), registry=self.registry)
        self.store = ScienceStore(state.db_path, state.path / "science")
        self.train = TrainJobs(JobRecords(self.db), self.hosts, self.nodes, state.path / "jobs",
                               head={"address": config.api_address, "token": self.token,
                                     "ca": self.tls.ca.read_text() if self.tls else None},
                               pool_metrics=PoolMetrics(self.registry),
                               log=self.log, stopping=self.stopping, on_failure=self.task_failed)
        self.science = ScienceDispatch(self.store, self.hosts, self.nodes, training=self.train.running_on,
                                       log=self.log, stopping=self.stopping, on_failure=self.task_failed)
        self.boinc = BoincFleet(alive=lambda: {r.name: r.boinc for r in self.hosts.alive()}, log=self.log)
        self.hosts_api = HostsApi(self.hosts, self.nodes, epoch=time.time(), running=self.running,
                                  busy=self.busy, on_lost=self.science.host_lost, log=self.log,
                                  about={"head": config.api_address, "ray": config.ray_address},
                                  loopback=not config.lan, training=self.train.running_on, boinc=self.boinc)
        self.registry.register(HeadCollector(FleetView(
            hosts=self.hosts, nodes=self.nodes, train_jobs=self.train.records.all, training_on=self.train.running_on,
            store=self.store, science_on=self.science.running_on, science_reported=lambda: self.science.reported)))
        science_api = ScienceApi(self.store, self.log, cancel=self.science.cancel, hosts=self.science.host_views)
        self.page = StatusPage(
            status=lambda: self.hosts_api.api_status({}), train_list=lambda: self.train.api_list({}),
            train_logs=lambda job, since: self.train.api_logs({"job": job, "since": since}),
            science_status=lambda: science_api.api_status({}),
            science_batch=lambda batch: science_api.api_status({"batch": batch}),
            links={"metrics": "/metrics", "ray_dashboard": f"http://{config.host}:{config.dashboard_port}",
                   "prometheus": f"http://{config.prometheus_host}:{config.prometheus_port}"
                   if config.prometheus_port else None,
                   "grafana": os.environ.get("SALVAGE_GRAFANA_URL")})
        self.routes = {
            ("GET", "/api/health"): Route(lambda _body: {"ok": True}, open=True),
            ("GET", "/api/cluster"): Route(self.api_cluster),
            # On loopback, Prometheus scrapes without the token; on the LAN it sends it.
            ("GET", "/metrics"): Route(self.metrics_page, kind="page", open=not config.lan),
            # The status page: open on loopback, behind the login form's cookie on the LAN.
            ("GET", "/"): Route(lambda _q: (self.page.html(), CONTENT_TYPE), kind="page", open=not config.lan,
                                login=True),
            ("GET", "/fragment"): Route(lambda _q: (self.page.fragment(), CONTENT_TYPE), kind="page",
                                        open=not config.lan, login=True),
            **self.hosts_api.routes(),
            **self.boinc.routes(),
            **self.train.routes(),
            **science_api.routes(),
        }
        self.routes[("GET", "/sd/agents")] = Route(self.hosts_api.sd_page, kind="page", open=not config.lan)
        if self.tls is not None:  # what an agent checks against the join line's fingerprint
            self.routes[("GET", "/api/tls/ca")] = Route(
                lambda _q: (self.tls.ca.read_bytes(), "application/x-pem-file"), kind="page", open=True)
            self.routes[("POST", "/api/tls/ray-node")] = Route(raytls.sign_route(state.tls_dir))

    def log(self, message: str) -> None:
        try:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)
        except OSError:
            pass  # a full disk: the line is lost, the head goes on (logging never takes it down)

    def task_failed(self, host: str, why: str) -> None:
        self.hosts_api.task_failed(host, why)

    # --- what runs where ---
    def running(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for job in self.train.records.all():
            if job["state"] == "running" and not job["pool_json"]:
                out.setdefault(job["host"], []).append(f"train job {job['id']}")
        for host, n in self.science.running_on().items():
            out.setdefault(host, []).append(f"science ({n} task{'s' if n > 1 else ''})")
        return out

    def busy(self) -> dict[str, int]:
        out = dict(self.train.running_on())
        for host, n in self.science.running_on().items():
            out[host] = out.get(host, 0) + n
        return out

    # --- API ---
    def api_cluster(self, _body: dict) -> dict:
        """What a PC needs to join, and what `salvage doctor` compares it with."""
        return {"ray_address": self.config.ray_address, "lan": self.config.lan, "ray_tls": self.config.lan,
                "epoch": self.hosts_api.epoch, "versions": VERSIONS, "time": time.time()}

    def metrics_page(self, _query: dict) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # --- Ray ---
    def start_head(self) -> None:
        c = self.config
        args = ["--head", "--port", str(c.ray_port), "--node-ip-address", c.host,
                "--num-cpus", "0",  # the head schedules; the PCs compute
                "--dashboard-host", c.host, "--dashboard-port", str(c.dashboard_port),
                "--ray-client-server-port", str(c.client_port), *node_ports_args(c.host, c.node_ports, HEAD_NODE_PORTS),
                *NO_LOG_MONITOR]
        store = os.environ.get("SALVAGE_RAY_OBJECT_STORE_BYTES")
        if store:
            args += ["--object-store-memory", store]
        self._forget_last_head()
        self.head_node = RayNode(args, ray_env(self.token), self.state.logs / "ray-head.log")
        self.head_node.start()

    def start_alertmanager(self) -> str:
        """Debian's Alertmanager, with the config `cluster up` wrote (its webhook)."""
        out = self.state.path / "alertmanager"
        listen = f"{alertmanager.LISTEN_HOST}:{self.config.alertmanager_port}"
        with open(self.state.logs / "alertmanager.log", "ab") as log:
            self.alertmanager = subprocess.Popen(alertmanager.command(out / "alertmanager.yml", out / "data", listen),
                                                 stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self.log(f"Alertmanager on http://{listen}")
        return listen

    def start_prometheus(self, alerts_to: str | None) -> None:
        out = self.state.path / "prometheus"
        lan = self.tls is not None
        config = write_config(out, self.config.api_address, self.state.token_file if lan else None,
                              self.tls.ca if lan else None, alerts_to)
        listen = f"{self.config.prometheus_host}:{self.config.prometheus_port}"
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
            # Another user's hint (an admin's `salvage demo` before the service's head)
            # cannot be rewritten, and `ray start --head` gives up on it: /tmp/ray is
            # everyone's, so the file can be removed instead.
            if not os.access(hint, os.W_OK) or hint.read_text().strip() == self.config.ray_address:
                hint.unlink()
        except OSError:
            pass

    def connect_ray(self, timeout: float = 90.0) -> None:
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
                return
            except Exception as err:  # GCS not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not connect to the Ray head: {err}") from None
                time.sleep(1.0)

    # --- the loop ---
    def tick(self) -> None:
        with self.loop_seconds.time():
            self.nodes.refresh()
            self.hosts_api.check_lost()
            self.train.step()

    def _stop_on_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())

    def run(self) -> int:
        self.state.pid_file.write_text(str(os.getpid()))
        self._stop_on_signals()
        # Hold the API's port before Ray starts: Ray's processes take free ports at random,
        # and one that took ours would answer `cluster up`'s health check in gRPC. Requests
        # wait in the listen queue until it serves, once Ray is up.
        server = serve(self.routes, self.config.host, self.config.http_port, self.token, self.log,
                       tls=self.tls.server_context() if self.tls else None, login_form=self.page.login_form)
        serving = False
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
            self._stop_on_signals()  # again: ray.init put in its own, which exits at once
            threading.Thread(target=server.serve_forever, daemon=True).start()
            serving = True
            science = threading.Thread(target=self.science.run, daemon=True, name="science")
            science.start()
            self.threads.append(science)
            if self.config.prometheus_port:
                self.start_prometheus(self.start_alertmanager() if self.config.alertmanager_port else None)
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
            if serving:
                server.shutdown()  # waits for serve_forever to end, so only once it runs
            server.server_close()
            self.shutdown()

    def shutdown(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)
        self.store.close()
        self.db.close()
        for child in (self.prometheus, self.alertmanager):
            if child is not None:
                child.terminate()
                child.wait(15)
        if self.head_node:
            # No drain: what ran is durable in SQLite and is reissued after `up`,
            # and a head killed whole frees its ports at once for the next `up`.
            self.log("stopping the Ray head")
            self.head_node.kill()
        self.state.pid_file.unlink(missing_ok=True)
        self.log("coordinator stopped")

