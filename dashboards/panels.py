"""Shared building blocks for the salvage dashboards (grafana-foundation-sdk)."""

import json
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

# deploy/grafana/provisioning/datasources/salvage.yml creates a datasource with
# this uid. Dashboards do not name it: each has a `datasource` variable listing
# every Prometheus datasource (Grafana's default one first), so they also import
# into an existing Grafana, and provisioning needs no `__inputs` placeholders.
DATASOURCE_UID = "salvage-prometheus"
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")

Query = prometheus.Dataquery


def query(expr: str, legend: str = "", *, instant: bool = False, as_table: bool = False) -> Query:
    built = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    if legend:
        built = built.legend_format(legend)
    if instant:
        built = built.instant()
    if as_table:
        built = built.format(PromQueryFormat.TABLE)
    return built


def _thresholds(steps: list[tuple[float | None, str]]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


# Warn and alarm colours above the given values (base colour green).
def warn_above(warn: float, alarm: float) -> list[tuple[float | None, str]]:
    return [(None, "green"), (warn, "orange"), (alarm, "red")]


def timeseries_panel(
    title: str,
    unit: str,
    queries: list[Query],
    *,
    description: str = "",
    span: int = 12,
    height: int = 8,
    stacked: bool = False,
    bars: bool = False,
    min_value: float | None = None,
    max_value: float | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
    dashed: str | None = None,
) -> timeseries.Panel:
    """A graph over time. `dashed` is a regex of series names drawn dashed
    (limits beside the values they bound)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(queries)
        .unit(unit)
        .span(span)
        .height(height)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
        .fill_opacity(30 if stacked or bars else 10)
    )
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL))
    if bars:
        panel = panel.draw_style(common_models.GraphDrawStyle.BARS)
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    if thresholds is not None:
        panel = panel.thresholds(_thresholds(thresholds)).thresholds_style(
            common.GraphThresholdsStyleConfig().mode(common_models.GraphTresholdsStyleMode.LINE)
        )
    if dashed is not None:
        panel = panel.override_by_regexp(
            dashed,
            [models.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})],
        )
    return panel


def stat_panel(
    title: str,
    unit: str,
    queries: list[Query],
    *,
    description: str = "",
    span: int = 6,
    height: int = 5,
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: dict[str, str] | None = None,
) -> stat.Panel:
    """The latest value(s), big. `mappings` turns raw values into words."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(queries)
        .unit(unit)
        .span(span)
        .height(height)
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .color_mode(common_models.BigValueColorMode.VALUE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds(thresholds or [(None, "green")]))
    )
    if mappings:
        panel = panel.mappings(
            [
                models.ValueMap(
                    options={
                        raw: models.ValueMappingResult(text=text, index=index)
                        for index, (raw, text) in enumerate(mappings.items())
                    }
                )
            ]
        )
    return panel


def bargauge_panel(
    title: str,
    unit: str,
    queries: list[Query],
    *,
    description: str = "",
    span: int = 8,
    height: int = 8,
    thresholds: list[tuple[float | None, str]] | None = None,
) -> bargauge.Panel:
    """One bar per series, latest value: for comparing hosts or models."""
    return (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(queries)
        .unit(unit)
        .span(span)
        .height(height)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .display_mode(common_models.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds(thresholds or [(None, "blue")]))
    )


def table_panel(
    title: str,
    queries: list[Query],
    *,
    description: str = "",
    span: int = 12,
    height: int = 8,
    hide_columns: tuple[str, ...] = ("Time", "Value", "__name__", "instance", "job"),
) -> table.Panel:
    """Labels of the current series as rows (inventory, who is doing what)."""
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(queries)
        .span(span)
        .height(height)
        .show_header(True)
        .with_transformation(
            models.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {column: True for column in hide_columns}},
            )
        )
    )


def label_variable(name: str, label: str, selector: str) -> dash.QueryVariable:
    """A multi-select variable over the values of `label` in `selector`;
    "All" means `.*`, so panels match it with `=~`."""
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f"label_values({selector}, {name})")
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(models.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def datasource_variable() -> dash.DatasourceVariable:
    """Which Prometheus the panels ask; every panel and variable names it as `${datasource}`."""
    return dash.DatasourceVariable(DATASOURCE_VARIABLE).label("Prometheus").type("prometheus")


def new_dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    """A dashboard whose first variable is the datasource its panels read."""
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["salvage"])
        .editable()
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
    )


def to_json(builder: dash.Dashboard) -> dict[str, Any]:
    """The dashboard as plain JSON data, panels numbered and queries lettered."""
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    # Grafana expects these lists even when empty.
    data["templating"].setdefault("list", [])
    data["annotations"].setdefault("list", [])
    # The SDK gives every variable the same all-zero id; Grafana keys
    # variables by name and needs no id.
    for variable in data["templating"]["list"]:
        variable.pop("id", None)
    panel_id = 0
    for panel in data["panels"]:
        for each in [panel, *panel.get("panels", [])]:
            panel_id += 1
            each["id"] = panel_id
            for index, target in enumerate(each.get("targets", [])):
                target["refId"] = chr(ord("A") + index)
    return data
