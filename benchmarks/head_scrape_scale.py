"""The head's scrape cost at 200 simulated agents.

A real head (`salvage cluster up` on loopback) is scraped by the real
`prometheus` binary with deploy/prometheus/prometheus.yml (only the head's
address, the intervals and Ray's file_sd path rewritten). Two phases in the
same run:

  baseline   the head with 0 agent records
  scale      200 agent records written straight into the head's SQLite
             `hosts` table (registration needs a live Ray node per host),
             each pointing at a lightweight exporter that replays the series
             of a real agent with 2 simulated GPUs

For each phase: Prometheus's `scrape_duration_seconds` for the head (mean and
max over the window), the head's samples per scrape, and this script's own
timed GETs of the head's /metrics and /sd/agents. Also the series one real
agent exports, split into per-host and per-GPU parts.
Last line: JSON.

    python benchmarks/head_scrape_scale.py [--agents 200] [--interval 5] [--window 30]
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))
from localcluster import LocalCluster  # noqa: E402

from cluster.head.db import Database  # noqa: E402
from cluster.head.hosts import HostRecords  # noqa: E402
from cluster.head.state import StateDir  # noqa: E402
from workers.records import GpuInfo, HostInfo  # noqa: E402

REAL_AGENT_GPUS = "RTX 3060:12GB:8.6,GTX 1060:3GB:6.1"
# Prometheus writes these for every target it scrapes.
PER_TARGET_SERIES = 5
# Below the coordinator's 20 s lost-after: fake hosts have no heartbeat and
# no Ray node, so their records are rewritten (fresh join time) this often.
KEEPALIVE_S = 5.0


@dataclass
class AgentSeries:
    total: int  # samples in one scrape of the agent
    per_gpu: int  # series that belong to one GPU (gpu="i" or device="gpui")
    per_host: int  # the rest: the PC itself, the agent, CPU speed


def count_series(text: str, n_gpus: int) -> AgentSeries:
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    per_gpu = [
        sum(1 for s in samples if s.labels.get("gpu") == str(i) or s.labels.get("device") == f"gpu{i}")
        for i in range(n_gpus)
    ]
    if len(set(per_gpu)) != 1:
        raise RuntimeError(f"GPUs export different series counts: {per_gpu}")
    return AgentSeries(total=len(samples), per_gpu=per_gpu[0], per_host=len(samples) - sum(per_gpu))


class Replay:
    """A collector serving a fixed set of metric families (one real agent's)."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


def start_exporters(text: str, count: int) -> list:
    """`count` prometheus_client HTTP servers in this process, each serving
    the real agent's series."""
    families = list(text_string_to_metric_families(text))
    servers = []
    for _ in range(count):
        registry = CollectorRegistry()
        registry.register(Replay(families))
        server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append(server)
    return servers


def fake_host(index: int) -> HostInfo:
    gpus = [
        GpuInfo(index=0, uuid=f"GPU-bench-{index:03d}-0", name="RTX 3060", vram_bytes=12 * 2**30,
                compute_capability="8.6", driver="550.54.14", power_limit_w=170.0, speed_gflops=9000.0),
        GpuInfo(index=1, uuid=f"GPU-bench-{index:03d}-1", name="GTX 1060", vram_bytes=3 * 2**30,
                compute_capability="6.1", driver="550.54.14", power_limit_w=120.0, speed_gflops=3500.0),
    ]
    return HostInfo(name=f"pc{index:03d}", cpu_model="bench CPU", cpu_cores=4, ram_bytes=16 * 2**30,
                    disk_bytes=500 * 2**30, gpus=gpus, cpu_gflops=50.0, simulated=True)


class Records:
    """The fake hosts' rows, kept alive until stopped."""

    def __init__(self, db_path: Path, addresses: list[str]) -> None:
        self.db = Database(db_path)
        self.records = HostRecords(self.db)
        self.hosts = [(fake_host(i + 1), address) for i, address in enumerate(addresses)]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._keep, daemon=True)

    def write(self) -> None:
        for info, address in self.hosts:
            self.records.upsert(info, f"bench-{info.name}", address, None, secret_hash=None, machine=info.name)

    def _keep(self) -> None:
        while not self.stopping.wait(KEEPALIVE_S):
            self.write()

    def start(self) -> None:
        self.write()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        self.db.close()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def timed_gets(url: str, n: int) -> dict[str, float]:
    """Median and p95 wall time (ms) of n sequential GETs, and the body size."""
    times, size = [], 0
    for _ in range(n):
        start = time.perf_counter()
        size = len(fetch(url))
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[min(n - 1, int(0.95 * n))], 2), "bytes": size}


class Prometheus:
    def __init__(self, workdir: Path, head: str, interval: float) -> None:
        empty_sd = workdir / "ray_sd.json"
        empty_sd.write_text("[]")  # no Ray targets: head + agents only
        seconds = f"{interval:g}s"
        config = ((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
                  .replace("127.0.0.2:8470", head).replace("15s", seconds)
                  .replace("/tmp/ray/prom_metrics_service_discovery.json", str(empty_sd)))
        (workdir / "prometheus.yml").write_text(config)
        shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", workdir / "alerts.yml")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{sock.getsockname()[1]}"
        self.log = workdir / "prometheus.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={self.address}"],
                stdout=log, stderr=subprocess.STDOUT)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        payload = json.loads(fetch(f"http://{self.address}/api/v1/query?{urllib.parse.urlencode(params)}"))
        if payload["status"] != "success":
            raise RuntimeError(f"query {expr!r}: {payload}")
        return payload["data"]["result"]

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else None

    def wait(self, expr: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.query(expr):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} (log: {self.log})")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure_phase(prom: Prometheus, head: str, window: float, requests: int) -> dict:
    """Let Prometheus scrape for `window` seconds, then read what it saw."""
    start = time.time()
    time.sleep(window)
    end = time.time()
    span = f"[{int(end - start)}s]"
    head_sel = 'scrape_duration_seconds{job="salvage-head"}'
    agent_sel = 'scrape_duration_seconds{job="salvage-agents"}'
    return {
        "head_scrape_duration_mean_ms": 1e3 * prom.scalar(f"avg_over_time({head_sel}{span})", end),
        "head_scrape_duration_max_ms": 1e3 * prom.scalar(f"max_over_time({head_sel}{span})", end),
        "head_scrapes": int(prom.scalar(f"count_over_time({head_sel}{span})", end)),
        "head_samples_per_scrape": int(prom.scalar('scrape_samples_scraped{job="salvage-head"}', end)),
        "agent_targets_up": int(prom.scalar('count(up{job="salvage-agents"} == 1) or vector(0)', end)),
        "agent_scrape_duration_mean_ms": _ms(prom.scalar(f"avg(avg_over_time({agent_sel}{span}))", end)),
        "head_metrics_get": timed_gets(f"http://{head}/metrics", requests),
        "head_sd_get": timed_gets(f"http://{head}/sd/agents", requests),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--interval", type=float, default=5.0, help="Prometheus scrape interval, seconds")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per phase")
    parser.add_argument("--requests", type=int, default=50, help="timed GETs per endpoint per phase")
    args = parser.parse_args()
    if shutil.which("prometheus") is None:
        sys.exit("prometheus: not installed (apt-get install prometheus)")

    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "state")
        prom: Prometheus | None = None
        exporters: list = []
        records: Records | None = None
        try:
            cluster.up()
            prom = Prometheus(Path(tmp), cluster.address, args.interval)
            prom.wait('count_over_time(up{job="salvage-head"}[5m]) >= 2', "two scrapes of the head", 60)
            print(f"baseline: head with 0 agent records, Prometheus every {args.interval:g} s for {args.window:g} s",
                  file=sys.stderr)
            baseline = measure_phase(prom, cluster.address, args.window, args.requests)

            # One real agent: the series it exports with 2 simulated GPUs.
            cluster.join("real", REAL_AGENT_GPUS)
            node = cluster.wait_state("real", "alive", timeout=120)
            prom.wait('scrape_samples_scraped{host="real"}', "a scrape of the real agent", 60)
            agent_text = fetch(f"http://{node['metrics']}/metrics").decode()
            series = count_series(agent_text, n_gpus=2)
            scraped = int(prom.scalar('scrape_samples_scraped{host="real"}'))
            cluster.stop_agent("real")  # leaves: its row stays as `left`, exported by no per-host series

            exporters = start_exporters(agent_text, args.agents)
            replayed = count_series(fetch(f"http://127.0.0.1:{exporters[0].server_port}/metrics").decode(), 2)
            if replayed.total != series.total:
                raise RuntimeError(f"exporter replays {replayed.total} series, the real agent has {series.total}")
            records = Records(StateDir(cluster.state_dir).db_path,
                              [f"127.0.0.1:{server.server_port}" for server in exporters])
            records.start()
            n_sd = len(json.loads(fetch(f"http://{cluster.address}/sd/agents")))
            if n_sd != args.agents:
                raise RuntimeError(f"/sd/agents lists {n_sd} agents, expected {args.agents}")
            prom.wait(f'count(up{{job="salvage-agents"}} == 1) == {args.agents}',
                      f"Prometheus to scrape all {args.agents} agents", 120)
            # A full window in which every scrape of the head saw 200 records.
            prom.wait(f'min_over_time(scrape_samples_scraped{{job="salvage-head"}}[{args.interval * 2:g}s]) '
                      f'> {baseline["head_samples_per_scrape"] + 3 * args.agents - 1}',
                      "the head to export all records", 60)
            print(f"scale: {args.agents} agent records and exporters", file=sys.stderr)
            scale = measure_phase(prom, cluster.address, args.window, args.requests)
        finally:
            if records is not None:
                records.stop()
            for server in exporters:
                server.shutdown()
            if prom is not None:
                prom.stop()
            cluster.down()

    rows = [
        ("Prometheus scrape_duration_seconds, head (mean)", "head_scrape_duration_mean_ms", "ms"),
        ("Prometheus scrape_duration_seconds, head (max)", "head_scrape_duration_max_ms", "ms"),
        ("head scrapes in window", "head_scrapes", ""),
        ("head samples per scrape", "head_samples_per_scrape", ""),
        ("agent targets up", "agent_targets_up", ""),
        ("agent scrape duration (mean of targets)", "agent_scrape_duration_mean_ms", "ms"),
    ]
    print(f"{'':46} {'0 agents':>12} {f'{args.agents} agents':>12}")
    for label, key, unit in rows:
        print(f"{label:46} {_fmt(baseline[key], unit):>12} {_fmt(scale[key], unit):>12}")
    for label, key in (("GET /metrics", "head_metrics_get"), ("GET /sd/agents", "head_sd_get")):
        for stat in ("median_ms", "p95_ms"):
            print(f"{f'{label} (this script, {stat[:-3]})':46} {_fmt(baseline[key][stat], 'ms'):>12} "
                  f"{_fmt(scale[key][stat], 'ms'):>12}")
        print(f"{f'{label} body':46} {baseline[key]['bytes']:>10} B {scale[key]['bytes']:>10} B")
    print(f"series per agent ({REAL_AGENT_GPUS}): {series.total} exported = {series.per_host} per host "
          f"+ {series.per_gpu} per GPU x 2; Prometheus scraped {scraped}, "
          f"stores {series.total + PER_TARGET_SERIES} with its {PER_TARGET_SERIES} per-target series")
    print(json.dumps({
        "agents": args.agents, "interval_s": args.interval, "window_s": args.window,
        "baseline": baseline, "scale": scale,
        "agent_series": {"total": series.total, "per_host": series.per_host, "per_gpu": series.per_gpu,
                         "gpus": 2, "prometheus_scraped": scraped},
    }))


def _fmt(value: float | int | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} {unit}" if unit else str(value)


if __name__ == "__main__":
    main()
