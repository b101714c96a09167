"""Prometheus config and alert rules: promtool accepts them, the rule unit
tests pass and cover every alert both ways, and alerts say where to look."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards.contract import series_labels
from dashboards.queries import selectors

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60, check=False
    )


def _rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alert_cases() -> list[tuple[str, list[dict]]]:
    """(alertname, expected alerts) for every alert_rule_test case."""
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    return [(case["alertname"], case.get("exp_alerts") or []) for test in tests for case in test["alert_rule_test"]]


def test_promtool_accepts_the_prometheus_config() -> None:
    result = _promtool("check", "config", CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    result = _promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_rules())} rules found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    names = {rule["alert"] for rule in _rules()}
    cases = _alert_cases()
    firing = {name for name, expected in cases if expected}
    quiet = {name for name, expected in cases if not expected}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"
    assert {name for name, _ in cases} <= names, "tests name alerts that do not exist"


def test_the_requested_alerts_exist() -> None:
    assert {rule["alert"] for rule in _rules()} >= {
        "SalvageWorkerDown",
        "SalvageGPUHot",
        "SalvageGPUThermalThrottling",
        "SalvageGPULost",
        "SalvageGPUMissing",
        "SalvageGPUXidError",
        "SalvageCoordinatorDown",
        "SalvageTrainingStalled",
        "SalvageScienceBacklogStuck",
        "SalvageScienceInvalidResults",
    }


def test_every_alert_has_a_severity_and_a_summary_naming_its_host_and_gpu() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"].strip(), name
    # Whatever labels a firing alert carries, its summary names them.
    per_host = set()
    for name, expected in _alert_cases():
        summary = rules[name]["annotations"]["summary"]
        for alert in expected:
            for label in ("host", "gpu", "job_id"):
                if label in alert["exp_labels"]:
                    assert f"$labels.{label}" in summary, f"{name}: summary does not name {label}"
            if "host" in alert["exp_labels"]:
                per_host.add(name)
    assert len(per_host) >= 7, f"only {sorted(per_host)} name a host"


def test_alert_rules_read_only_metrics_of_the_contract() -> None:
    known = series_labels()
    for rule in _rules():
        found = selectors(rule["expr"])
        assert found, rule["alert"]
        for selector in found:
            assert selector.metric in known, f"{rule['alert']}: {selector.metric} is not in the metric contract"
            assert selector.labels <= known[selector.metric], (
                f"{rule['alert']}: {selector.metric} has no label {sorted(selector.labels - known[selector.metric])}"
            )


def test_scrape_config_finds_head_agents_and_ray() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"salvage-head", "salvage-agents", "ray"}
    assert jobs["salvage-head"]["static_configs"][0]["targets"] == ["127.0.0.2:8470"]
    assert jobs["salvage-agents"]["http_sd_configs"][0]["url"] == "http://127.0.0.2:8470/sd/agents"
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert config["rule_files"] == ["alerts.yml"]
    assert config["global"]["scrape_interval"] == "15s"


def test_scrape_config_is_rewritable_by_plain_text_substitution() -> None:
    """End-to-end tests swap ports, paths and intervals by string replacement;
    each must appear literally so the rewrite cannot miss one."""
    text = CONFIG.read_text()
    rewritten = (
        text.replace("127.0.0.2:8470", "127.0.0.1:19999")
        .replace("15s", "1s")
        .replace("/tmp/ray/prom_metrics_service_discovery.json", "/tmp/x/sd.json")
    )
    config = yaml.safe_load(rewritten)
    settings = yaml.safe_dump(config)
    assert "8470" not in settings and "15s" not in settings and "/tmp/ray" not in settings
    for job in config["scrape_configs"]:
        assert job["scrape_interval"] == "1s"
    assert config["scrape_configs"][1]["http_sd_configs"][0]["url"] == "http://127.0.0.1:19999/sd/agents"
