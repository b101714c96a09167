"""Every dashboard query and alert rule, sent to a real Prometheus that
scrapes stand-in exporters serving every metric of the contract.

Prometheus runs with deploy/prometheus/prometheus.yml, rewritten only in
ports, paths and intervals, so this also proves the head is scraped, agents
are found through the head's http_sd endpoint with their `host` label, and
the alert rules evaluate without error.
"""

import itertools
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from promclient import Prometheus

from dashboards.contract import AGENT_TARGET_LABELS, METRICS, TARGET_LABELS, Metric
from dashboards.queries import panel_queries, substitute, template_variables

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
JSON_DIR = ROOT / "dashboards" / "json"
AGENT_METRICS = {metric.name for metric in METRICS if AGENT_TARGET_LABELS - TARGET_LABELS <= metric.labels}

# One or two plausible values per label, enough for every panel's matchers.
LABEL_VALUES: dict[str, list[str]] = {
    "gpu": ["0"],
    "uuid": ["GPU-5f1c"],
    "model": ["NVIDIA GeForce RTX 3060"],
    "compute_capability": ["8.6"],
    "driver": ["550.54.14"],
    "reason": ["power_cap", "hw_thermal"],
    "state": ["alive", "busy", "running", "unsent"],
    "device": ["gpu0"],
    "host": ["pc1"],
    "kind": ["train", "science"],
    "resource": ["GPU"],
    "job_id": ["shakespeare"],
    "split": ["train", "val"],
    "worker": ["pc1"],
    "validate_state": ["valid", "invalid"],
    "mode": ["never", "auto"],
    "project_url": ["https://boinc.example.org/"],
    "name": ["Example@home"],
}


def _series(metric: Metric, exported: frozenset[str]) -> Iterator[str]:
    names = sorted(metric.labels & exported)
    for values in itertools.product(*(LABEL_VALUES[name] for name in names)):
        yield ",".join(f'{name}="{value}"' for name, value in zip(names, values))


def exposition(metrics: list[Metric], exported: frozenset[str], scrape: int) -> str:
    """Text format for `metrics`: gauges at 1 (timestamps now), counters and
    histograms growing with every scrape."""
    lines = []
    for metric in metrics:
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels in _series(metric, exported):
            sep = "," if labels else ""
            if metric.kind == "histogram":
                for le in ("0.1", "+Inf"):
                    lines.append(f'{metric.name}_bucket{{{labels}{sep}le="{le}"}} {scrape}')
                lines.append(f"{metric.name}_sum{{{labels}}} {0.05 * scrape}")
                lines.append(f"{metric.name}_count{{{labels}}} {scrape}")
            elif metric.kind == "counter":
                lines.append(f"{metric.name}{{{labels}}} {scrape}")
            elif metric.name.endswith("_timestamp_seconds"):
                lines.append(f"{metric.name}{{{labels}}} {time.time()}")
            else:
                lines.append(f"{metric.name}{{{labels}}} 1")
    return "\n".join(lines) + "\n"


class _Exporter(ThreadingHTTPServer):
    def __init__(self, metrics: list[Metric], exported: frozenset[str]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.metrics, self.exported, self.scrapes, self.agents = metrics, exported, 0, b"[]"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Exporter

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/metrics":
            self.server.scrapes += 1
            body = exposition(self.server.metrics, self.server.exported, self.server.scrapes).encode()
            kind = "text/plain; version=0.0.4"
        elif self.path == "/sd/agents":
            body, kind = self.server.agents, "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    workdir = tmp_path_factory.mktemp("prometheus")
    head = _Exporter([m for m in METRICS if m.name not in AGENT_METRICS and m.name != "up"], frozenset(LABEL_VALUES))
    agent = _Exporter([m for m in METRICS if m.name in AGENT_METRICS and m.name != "up"], frozenset(LABEL_VALUES) - {"host"})
    head.agents = json.dumps([{"targets": [agent.address], "labels": {"host": "pc1"}}]).encode()
    for server in (head, agent):
        threading.Thread(target=server.serve_forever, daemon=True).start()

    ray_sd = workdir / "ray_sd.json"
    ray_sd.write_text("[]")
    config = (
        (PROMETHEUS_DIR / "prometheus.yml")
        .read_text()
        .replace("127.0.0.2:8470", head.address)
        .replace("15s", "1s")
        .replace("/tmp/ray/prom_metrics_service_discovery.json", str(ray_sd))
    )
    (workdir / "prometheus.yml").write_text(config)
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", workdir / "alerts.yml")
    address = f"127.0.0.1:{_free_port()}"
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        prom = Prometheus(address)
        # Three scrapes of each kind of target: enough for every rate().
        _wait(
            lambda: len(prom.query('count_over_time(up{job=~"salvage-head|salvage-agents"}[1m]) >= 3')) == 2,
            f"Prometheus to scrape head and agent (log: {workdir / 'prometheus.log'})",
        )
        yield prom
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        head.shutdown()
        agent.shutdown()


def test_agents_are_discovered_through_the_head_with_their_host_label(prometheus: Prometheus) -> None:
    (series,) = prometheus.query('up{job="salvage-agents"}')
    assert series["metric"]["host"] == "pc1" and series["value"][1] == "1"
    assert prometheus.query('salvage_gpu_temperature_celsius{host="pc1", gpu="0"}')


@pytest.mark.parametrize("name", sorted(path.stem for path in JSON_DIR.glob("*.json")))
def test_every_panel_query_returns_data(prometheus: Prometheus, name: str) -> None:
    dashboard = json.loads((JSON_DIR / f"{name}.json").read_text())
    empty = [expr for expr in panel_queries(dashboard) if not prometheus.query(expr)]
    assert empty == []


@pytest.mark.parametrize("name", sorted(path.stem for path in JSON_DIR.glob("*.json")))
def test_every_template_variable_lists_values(prometheus: Prometheus, name: str) -> None:
    dashboard = json.loads((JSON_DIR / f"{name}.json").read_text())
    everything = {variable["name"]: ".*" for variable in template_variables(dashboard)}
    for variable in template_variables(dashboard):
        if variable["type"] != "query":  # the datasource variable lists Grafana's datasources, not series
            continue
        selector, label = substitute(variable["query"], everything).removeprefix("label_values(")[:-1].rsplit(",", 1)
        values = prometheus.get(f"/api/v1/label/{label.strip()}/values", **{"match[]": selector})
        assert values, variable["name"]


def test_alert_rules_evaluate_without_errors(prometheus: Prometheus) -> None:
    def rules() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    _wait(lambda: all(rule["health"] != "unknown" for rule in rules()), "every rule to be evaluated")
    assert len(rules()) == 10
    assert {rule["name"]: rule["health"] for rule in rules()} == {rule["name"]: "ok" for rule in rules()}
