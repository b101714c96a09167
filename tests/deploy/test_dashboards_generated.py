"""The committed dashboard JSON is what the code generates, and every panel
asks Prometheus for metrics the exporters promise."""

import json
import re
import shutil
from pathlib import Path

import pytest

from dashboards import generate
from dashboards.contract import series_labels
from dashboards.panels import DATASOURCE_VARIABLE
from dashboards.queries import iter_panels, panel_queries, selectors, variable_selectors

JSON_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "json"
NAMES = ["fleet.json", "gpu_health.json", "science.json", "training.json"]


def _load(name: str) -> dict:
    return json.loads((JSON_DIR / name).read_text())


def test_the_four_dashboards_are_generated() -> None:
    assert sorted(path.name for path in JSON_DIR.glob("*.json")) == NAMES
    uids = [_load(name)["uid"] for name in NAMES]
    assert len(set(uids)) == len(uids)


def test_committed_json_matches_the_code() -> None:
    assert generate.stale_files() == []
    assert generate.main(["--check"]) == 0


def test_check_mode_catches_edited_missing_and_leftover_files(tmp_path: Path) -> None:
    shutil.copytree(JSON_DIR, tmp_path, dirs_exist_ok=True)
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0
    edited = tmp_path / "science.json"
    edited.write_text(edited.read_text().replace("Credit per host", "Credits"))
    (tmp_path / "training.json").unlink()
    (tmp_path / "old.json").write_text("{}")
    assert sorted(generate.stale_files(tmp_path)) == ["old.json", "science.json", "training.json"]
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    # Regenerating repairs all three.
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert generate.stale_files(tmp_path) == []


def _query_variables(dashboard: dict) -> list[dict]:
    return [variable for variable in dashboard["templating"]["list"] if variable["type"] == "query"]


@pytest.mark.parametrize("name", NAMES)
def test_no_import_placeholders_and_the_datasource_is_chosen_on_the_dashboard(name: str) -> None:
    """Every panel reads the Prometheus picked in the dashboard's `datasource` variable,
    so the dashboards import into an existing Grafana whatever its datasource is called."""
    text = (JSON_DIR / name).read_text()
    assert "__inputs" not in text and "${DS_" not in text
    dashboard = json.loads(text)
    chosen = {"type": "prometheus", "uid": "${" + DATASOURCE_VARIABLE + "}"}
    first = dashboard["templating"]["list"][0]
    assert (first["name"], first["type"], first["query"]) == (DATASOURCE_VARIABLE, "datasource", "prometheus")
    for panel in iter_panels(dashboard):
        assert panel["datasource"] == chosen, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == chosen, panel["title"]
    for variable in _query_variables(dashboard):
        assert variable["datasource"] == chosen, variable["name"]


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_has_a_query_and_a_unique_id(name: str) -> None:
    dashboard = _load(name)
    panels = list(iter_panels(dashboard))
    assert len(panels) >= 5
    for panel in panels:
        exprs = [target.get("expr", "").strip() for target in panel.get("targets", [])]
        assert exprs and all(exprs), f"{panel['title']}: a target without a query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("name", NAMES)
def test_panels_read_only_metrics_and_labels_of_the_contract(name: str) -> None:
    known = series_labels()
    dashboard = _load(name)
    for expr in panel_queries(dashboard):
        found = selectors(expr)
        assert found, f"no metric in {expr!r}"
        for selector in found:
            assert selector.metric in known, f"{selector.metric} is not in the metric contract ({expr!r})"
            missing = selector.labels - known[selector.metric]
            assert not missing, f"{selector.metric} has no label {sorted(missing)} ({expr!r})"
    for variable, selector in variable_selectors(dashboard):
        assert selector.metric in known, variable
        assert selector.labels <= known[selector.metric], variable


@pytest.mark.parametrize("name", NAMES)
def test_template_variables_are_matched_as_regexes_and_all_get_filled(name: str) -> None:
    dashboard = _load(name)
    raw = [target["expr"] for panel in iter_panels(dashboard) for target in panel["targets"]]
    for variable in _query_variables(dashboard):
        # "All" is `.*` and several values are `a|b`: only =~ matches those.
        for expr in raw:
            assert not re.search(rf'(?<![=!])(=|!=)\s*"\$\{{?{variable["name"]}\b', expr), expr
        assert variable["allValue"] == ".*" and variable["includeAll"]
    for expr in panel_queries(dashboard):
        assert "$" not in expr, expr


def test_gpu_health_filters_by_host_and_gpu() -> None:
    dashboard = _load("gpu_health.json")
    assert [variable["name"] for variable in dashboard["templating"]["list"]] == [DATASOURCE_VARIABLE, "host", "gpu"]
    chosen = panel_queries(dashboard, {"host": "pc7", "gpu": "1"})
    gpu_panels = [expr for expr in chosen if "salvage_gpu_" in expr]
    assert gpu_panels and all('host=~"pc7"' in expr and 'gpu=~"1"' in expr for expr in gpu_panels)


def test_panel_queries_fill_grafana_builtins() -> None:
    exprs = panel_queries(_load("science.json"), builtins={"__rate_interval": "7s", "__interval": "1s", "__range": "9m"})
    assert any("[7s]" in expr for expr in exprs) and any("[9m]" in expr for expr in exprs)


def test_each_dashboard_shows_what_it_is_for() -> None:
    """The panels the operator asked for, by the metrics behind them."""

    def metrics(name: str) -> set[str]:
        return {selector.metric for expr in panel_queries(_load(name)) for selector in selectors(expr)}

    assert metrics("fleet.json") >= {"salvage_hosts", "salvage_gpus", "salvage_host_speed_flops", "salvage_host_running"}
    assert metrics("gpu_health.json") >= {
        "salvage_gpu_temperature_celsius",
        "salvage_gpu_power_watts",
        "salvage_gpu_power_limit_watts",
        "salvage_gpu_utilization_ratio",
        "salvage_gpu_memory_used_bytes",
        "salvage_gpu_fan_ratio",
        "salvage_gpu_sm_clock_hertz",
        "salvage_gpu_throttle",
    }
    assert metrics("training.json") >= {
        "salvage_train_iteration",
        "salvage_train_loss",
        "salvage_train_tokens_per_second",
        "salvage_train_last_progress_timestamp_seconds",
    }
    assert metrics("science.json") >= {
        "salvage_science_workunits",
        "salvage_science_results_reported_total",
        "salvage_science_results_total",
        "salvage_science_credit_total",
    }
