"""`cluster up --prometheus`: a local Prometheus with deploy/prometheus's
configuration, pointed at this head; the embedded default for monitoring.

On the LAN the head's /metrics and service discovery need the token and speak
TLS, so the generated configuration carries both: an `authorization`
credentials file (the state dir's token, never copied) and the head's CA.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from .alertmanager import add_alerting
from .templates import DEPLOY as SHIPPED

DEPLOY = SHIPPED / "prometheus"
SHIPPED_HEAD = "127.0.0.2:8470"
HEAD_JOBS = ("salvage-head", "salvage-agents")


class PrometheusError(Exception):
    pass


def render(text: str, head: str, token_file: Path | None = None, ca_file: Path | None = None,
           alertmanager: str | None = None) -> str:
    """deploy/prometheus/prometheus.yml for the head at `head`; with `token_file`
    (a LAN head) its two jobs send the token and check the head's certificate;
    with `alertmanager` (HOST:PORT) its alerts go there."""
    config = yaml.safe_load(text.replace(SHIPPED_HEAD, head))
    if alertmanager:
        add_alerting(config, alertmanager)
    if token_file is not None:
        def auth() -> dict:  # a fresh copy each time: shared ones would come out as YAML anchors
            return {"authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                    "tls_config": {"ca_file": str(ca_file)}}

        for job in config["scrape_configs"]:
            if job["job_name"] not in HEAD_JOBS:
                continue
            for sd in job.get("http_sd_configs", []):  # the discovery request goes to the head too
                sd["url"] = sd["url"].replace("http://", "https://")
                sd.update(auth())
            if job["job_name"] == "salvage-head":
                job["scheme"] = "https"
                job.update(auth())
    return yaml.safe_dump(config, sort_keys=False)


def write_config(out_dir: Path, head: str, token_file: Path | None = None, ca_file: Path | None = None,
                 alertmanager: str | None = None) -> Path:
    """The configuration and alert rules for this head, in `out_dir`."""
    if not (DEPLOY / "prometheus.yml").exists():
        raise PrometheusError(f"prometheus: its configuration is missing ({DEPLOY}); reinstall salvage")
    out_dir.mkdir(parents=True, exist_ok=True)
    text = render((DEPLOY / "prometheus.yml").read_text(), head, token_file, ca_file, alertmanager)
    (out_dir / "prometheus.yml").write_text(text)
    shutil.copy(DEPLOY / "alerts.yml", out_dir / "alerts.yml")
    return out_dir / "prometheus.yml"


def command(config: Path, data_dir: Path, listen: str) -> list[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError("prometheus: no `prometheus` binary on PATH (apt-get install prometheus)")
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data_dir}", f"--web.listen-address={listen}"]
