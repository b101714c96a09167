"""Grafana provisioning for the Prometheus that `cluster up --prometheus` runs: the
shipped deploy/grafana files, rendered with that Prometheus' URL and the path of the
dashboards this salvage installed, so Grafana on the head needs no hand editing."""
from __future__ import annotations

from pathlib import Path

import yaml

from .templates import DASHBOARDS_JSON, DEPLOY

PROVISIONING = DEPLOY / "grafana" / "provisioning"
FILE = "salvage.yml"  # the same name in datasources/ and dashboards/
HEADER = "# Written by `salvage cluster up --prometheus` from deploy/grafana/provisioning/{}/salvage.yml.\n"


def render_datasource(text: str, prometheus_url: str) -> str:
    """datasources/salvage.yml pointing at `prometheus_url`."""
    config = yaml.safe_load(text)
    (source,) = config["datasources"]
    source["url"] = prometheus_url
    return yaml.safe_dump(config, sort_keys=False)


def render_dashboards(text: str, json_dir: Path) -> str:
    """dashboards/salvage.yml loading the generated dashboards from `json_dir`."""
    config = yaml.safe_load(text)
    (provider,) = config["providers"]
    provider["options"]["path"] = str(json_dir)
    return yaml.safe_dump(config, sort_keys=False)


def write_provisioning(out_dir: Path, prometheus_url: str, json_dir: Path = DASHBOARDS_JSON) -> Path:
    """Grafana's provisioning dir for this head in `out_dir` (point Grafana's
    `paths.provisioning` there, or copy its two files); returns it."""
    for kind, render, value in (("datasources", render_datasource, prometheus_url),
                                ("dashboards", render_dashboards, json_dir)):
        (out_dir / kind).mkdir(parents=True, exist_ok=True)
        text = render((PROVISIONING / kind / FILE).read_text(), value)
        (out_dir / kind / FILE).write_text(HEADER.format(kind) + text)
    return out_dir
