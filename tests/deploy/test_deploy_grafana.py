"""Grafana provisioning and the compose file agree with the dashboards."""

import json
from pathlib import Path

import yaml

from dashboards.panels import DATASOURCE_UID

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROVISIONING = DEPLOY / "grafana" / "provisioning"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yml").read_text())


def _mounts(service: str) -> dict[str, Path]:
    """container path -> host path (resolved against deploy/) of bind mounts."""
    mounts = {}
    for volume in _compose()["services"][service]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def test_datasource_is_prometheus_with_the_uid_dashboards_use() -> None:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "salvage.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == DATASOURCE_UID
    # Prometheus listens here in compose.yml.
    assert source["url"] == "http://127.0.0.1:9090"
    assert "--web.listen-address=127.0.0.1:9090" in _compose()["services"]["prometheus"]["command"]


def test_dashboard_provider_reads_the_mounted_generated_json() -> None:
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "salvage.yml").read_text())["providers"]
    assert provider["type"] == "file"
    mounts = _mounts("grafana")
    json_dir = mounts[provider["options"]["path"]]
    assert json_dir == ROOT / "dashboards" / "json"
    assert {path.name for path in json_dir.glob("*.json")} >= {"fleet.json", "gpu_health.json"}
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING


def test_prometheus_container_gets_the_config_rules_and_ray_discovery_file() -> None:
    service = _compose()["services"]["prometheus"]
    assert service["network_mode"] == "host"
    mounts = _mounts("prometheus")
    config_dir = mounts["/etc/prometheus"]
    assert (config_dir / "prometheus.yml").is_file() and (config_dir / "alerts.yml").is_file()
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    assert "/tmp/ray" in mounts


def test_home_dashboard_exists() -> None:
    env = _compose()["services"]["grafana"]["environment"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    host_path = _mounts("grafana")[str(Path(home).parent)] / Path(home).name
    assert json.loads(host_path.read_text())["uid"] == "salvage-fleet"
