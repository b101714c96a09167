"""deploy/alertmanager: amtool accepts the shipped template, its rendering for a
webhook, and its commented e-mail example once uncommented; Prometheus' config
with the `alerting:` section passes promtool; the command line runs Alertmanager
alone."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.head import alertmanager, prometheus

TEMPLATE = alertmanager.DEPLOY / "alertmanager.yml"
URL = "http://127.0.0.1:9999/hooks/salvage"


def _tool(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install prometheus prometheus-alertmanager)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def test_amtool_accepts_the_shipped_template():
    result = _tool("amtool", "check-config", str(TEMPLATE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rendered_config_sends_everything_to_the_webhook_and_passes_amtool(tmp_path):
    path = alertmanager.write_config(tmp_path / "am", URL)
    assert path.stat().st_mode & 0o777 == 0o600  # a webhook URL often carries its own secret
    result = _tool("amtool", "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    assert config["route"]["receiver"] == "webhook"
    (webhook,) = [r for r in config["receivers"] if r["name"] == "webhook"]
    assert webhook["webhook_configs"][0]["url"] == URL and webhook["webhook_configs"][0]["send_resolved"] is True
    assert config["route"]["group_wait"] == "30s" and config["route"]["repeat_interval"] == "4h"


def test_the_commented_e_mail_example_is_valid_once_uncommented(tmp_path):
    # Comment lines that hold YAML keys ("# routes:", "#   - to: ..."), not prose.
    text = re.sub(r"(?m)^(\s*)# (\s*(?:- )?[a-z_]+:.*)$", r"\1\2", TEMPLATE.read_text())
    config = yaml.safe_load(text)
    assert [r["name"] for r in config["receivers"]] == ["webhook", "email"]
    assert config["route"]["routes"][0]["receiver"] == "email"
    (tmp_path / "alertmanager.yml").write_text(text)
    result = _tool("amtool", "check-config", str(tmp_path / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_a_webhook_the_placeholder_is_refused():
    with pytest.raises(alertmanager.AlertmanagerError, match=r"^alert-webhook: give the URL"):
        alertmanager.render(TEMPLATE.read_text(), None)
    edited = TEMPLATE.read_text().replace(alertmanager.PLACEHOLDER_URL, URL)
    assert URL in alertmanager.render(edited, None)  # an operator's own receiver is kept


@pytest.mark.parametrize("url", ["ftp://example.org/x", "not a url", "http://", alertmanager.PLACEHOLDER_URL])
def test_a_bad_webhook_url_is_a_one_line_error(url):
    with pytest.raises(alertmanager.AlertmanagerError, match=r"^alert-webhook: ") as err:
        alertmanager.render(TEMPLATE.read_text(), url)
    assert "\n" not in str(err.value)


def test_alertmanager_runs_alone_with_its_own_storage(tmp_path):
    if shutil.which("prometheus-alertmanager") is None:
        pytest.skip("prometheus-alertmanager not installed")
    cmd = alertmanager.command(tmp_path / "alertmanager.yml", tmp_path / "data", "127.0.0.1:9093")
    assert cmd[0].endswith("alertmanager")
    assert cmd[1:] == [f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'data'}",
                       "--web.listen-address=127.0.0.1:9093", "--cluster.listen-address="]


def test_prometheus_with_the_alerting_section_passes_promtool(tmp_path):
    config = yaml.safe_load(prometheus.render((prometheus.DEPLOY / "prometheus.yml").read_text(), "127.0.0.2:8470"))
    alertmanager.add_alerting(config, "127.0.0.1:9093")
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(prometheus.DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    result = _tool("promtool", "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rendered_config_keeps_the_e_mail_example_for_the_operator_to_uncomment(tmp_path):
    """docs/operator.md: edit STATE_DIR/alertmanager/alertmanager.yml and uncomment its e-mail example."""
    path = alertmanager.write_config(tmp_path / "am", URL)
    text = re.sub(r"(?m)^(\s*)# (\s*(?:- )?[a-z_]+:.*)$", r"\1\2", path.read_text())
    config = yaml.safe_load(text)
    assert [r["name"] for r in config["receivers"]] == ["webhook", "email"]
    assert config["receivers"][0]["webhook_configs"][0]["url"] == URL
    path.write_text(text)
    result = _tool("amtool", "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
