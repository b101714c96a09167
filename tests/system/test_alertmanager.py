"""Alerts reach someone: a loopback cluster with a hot simulated GPU, a real
Prometheus with the head's rendered config (and its `alerting:` section), a
real Alertmanager with deploy/alertmanager's config rendered for a webhook,
and a webhook receiver served by this test. SalvageGPUHot must arrive there
with its host and GPU, and its resolution when the card cools down.

Only the timings are shortened: scrape and evaluation every second, rules'
`for:` to 2 s, Alertmanager's group_wait to 1 s."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.head import alertmanager, prometheus

HOT_C = 92  # above SalvageGPUHot's 85 °C

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
    reason="needs Debian's prometheus and prometheus-alertmanager (apt-get install prometheus prometheus-alertmanager)")


@dataclass
class Webhook:
    """The operator's end: every notification Alertmanager POSTs, in order."""

    server: ThreadingHTTPServer
    received: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/salvage-alerts"

    def alerts(self, name: str, status: str) -> list[dict]:
        return [a for note in list(self.received) for a in note["alerts"]
                if a["labels"]["alertname"] == name and a["status"] == status]


def start_webhook() -> Webhook:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Webhook(server, received)


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def wait(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def ready(address: str) -> bool:
    with urllib.request.urlopen(f"http://{address}/-/ready", timeout=2) as response:
        return response.status == 200


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Alerting:
    webhook: Webhook
    spec: Path  # the hot agent's live GPU file
    processes: list[subprocess.Popen]
    logs: Path


@pytest.fixture(scope="module")
def alerting(local_cluster, tmp_path_factory) -> Iterator[Alerting]:
    work = tmp_path_factory.mktemp("alerting")
    spec = work / "hot.json"
    spec.write_text(json.dumps([{"name": "GTX 1070", "vram": "8GB", "cc": "6.1", "temperature_c": HOT_C}]))
    webhook = start_webhook()
    processes: list[subprocess.Popen] = []
    try:
        # Alertmanager as `cluster up` would run it, waiting 1 s to group instead of 30.
        config = yaml.safe_load(alertmanager.write_config(work / "am", webhook.url).read_text())
        config["route"].update(group_wait="1s", group_interval="1s")
        (work / "am" / "alertmanager.yml").write_text(yaml.safe_dump(config))
        am_address = free_address()
        processes.append(start(alertmanager.command(work / "am" / "alertmanager.yml", work / "am" / "data", am_address),
                               work / "alertmanager.log"))
        wait(lambda: ready(am_address), f"Alertmanager to be ready (log: {work / 'alertmanager.log'})", 30)

        # Prometheus with the head's rendered config plus `alerting:`, every second.
        shipped = (prometheus.DEPLOY / "prometheus.yml").read_text().replace("15s", "1s")
        prom = yaml.safe_load(prometheus.render(shipped, local_cluster.address))
        alertmanager.add_alerting(prom, am_address)
        (work / "prometheus.yml").write_text(yaml.safe_dump(prom, sort_keys=False))
        rules = re.sub(r"(?m)^(\s+for:\s*)\d+[smh]\s*$", r"\g<1>2s", (prometheus.DEPLOY / "alerts.yml").read_text())
        (work / "alerts.yml").write_text(rules)
        prom_address = free_address()
        processes.append(start(prometheus.command(work / "prometheus.yml", work / "data", prom_address),
                               work / "prometheus.log"))
        wait(lambda: ready(prom_address), f"Prometheus to be ready (log: {work / 'prometheus.log'})", 30)

        local_cluster.join("hot", f"@{spec}")
        local_cluster.wait_state("hot", "alive", timeout=90)
        yield Alerting(webhook, spec, processes, work)
    finally:
        for proc in reversed(processes):
            stop(proc)
        webhook.server.shutdown()
        webhook.server.server_close()


def test_a_hot_gpu_alert_reaches_the_webhook_with_its_host_and_gpu(alerting):
    hot = wait(lambda: alerting.webhook.alerts("SalvageGPUHot", "firing"),
               f"SalvageGPUHot at the webhook (logs in {alerting.logs})", 90)
    assert {(a["labels"]["host"], a["labels"]["gpu"], a["labels"]["severity"]) for a in hot} == {("hot", "0", "warning")}
    assert f"is at {HOT_C} °C" in hot[0]["annotations"]["summary"]
    note = next(n for n in alerting.webhook.received if any(a in hot for a in n["alerts"]))
    assert note["receiver"] == "webhook" and note["groupLabels"] == {"alertname": "SalvageGPUHot"}


def test_the_alert_resolves_at_the_webhook_when_the_gpu_cools(alerting):
    wait(lambda: alerting.webhook.alerts("SalvageGPUHot", "firing"), "SalvageGPUHot to fire first", 90)
    alerting.spec.write_text(json.dumps([{"name": "GTX 1070", "vram": "8GB", "cc": "6.1", "temperature_c": 50}]))
    resolved = wait(lambda: alerting.webhook.alerts("SalvageGPUHot", "resolved"),
                    f"SalvageGPUHot resolved at the webhook (logs in {alerting.logs})", 90)
    assert resolved[0]["labels"]["host"] == "hot" and resolved[0]["labels"]["gpu"] == "0"


def test_everything_the_test_started_stops(alerting):
    processes = list(alerting.processes)
    for proc in processes:
        stop(proc)
    assert [proc.returncode for proc in processes] == [0, 0]  # both leave cleanly on SIGTERM
