"""The shipped deploy/ files are templates: the code that `cluster up` runs renders
them for the head it serves, and what it renders for a LAN head passes promtool."""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import cluster
from cluster.head import grafana, prometheus, templates, tls
from dashboards.panels import DATASOURCE_UID

LAN_HEAD = "10.1.2.3:8470"  # only written into files: nothing is sent there


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_the_templates_are_found_through_the_package_not_the_checkout():
    assert templates.DEPLOY == Path(cluster.__file__).parent / "deploy"
    assert (templates.DEPLOY / "prometheus" / "prometheus.yml").is_file()
    assert {p.name for p in templates.DASHBOARDS_JSON.glob("*.json")} == {
        "fleet.json", "gpu_health.json", "science.json", "training.json"}


def test_the_prometheus_config_for_a_lan_head_sends_the_token_over_tls_and_passes_promtool(tmp_path):
    token = tmp_path / "state" / "token"
    token.parent.mkdir()
    token.write_text("t" * 64)
    token.chmod(0o600)
    ca = tls.ensure(tmp_path / "state" / "tls", LAN_HEAD.split(":")[0]).ca
    path = prometheus.write_config(tmp_path / "prometheus", LAN_HEAD, token, ca, alertmanager="127.0.0.1:9093")
    result = _promtool("check", "config", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    text = path.read_text()
    assert "127.0.0.2" not in text and "&id" not in text  # no shipped address left, no YAML anchors
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    head, agents = jobs["salvage-head"], jobs["salvage-agents"]
    assert head["static_configs"][0]["targets"] == [LAN_HEAD] and head["scheme"] == "https"
    sd = agents["http_sd_configs"][0]
    assert sd["url"] == f"https://{LAN_HEAD}/sd/agents"
    for where in (head, sd):
        assert where["authorization"] == {"type": "Bearer", "credentials_file": str(token)}
        assert where["tls_config"] == {"ca_file": str(ca)}
    assert "t" * 64 not in text  # the token is named by its file, never copied


def test_grafana_provisioning_points_at_that_prometheus_and_the_installed_dashboards(tmp_path):
    out = grafana.write_provisioning(tmp_path / "provisioning", "http://127.0.0.1:9191")
    (source,) = yaml.safe_load((out / "datasources" / "salvage.yml").read_text())["datasources"]
    assert (source["type"], source["uid"], source["url"]) == ("prometheus", DATASOURCE_UID, "http://127.0.0.1:9191")
    (provider,) = yaml.safe_load((out / "dashboards" / "salvage.yml").read_text())["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]) == templates.DASHBOARDS_JSON
    assert len(list(Path(provider["options"]["path"]).glob("*.json"))) == 4
