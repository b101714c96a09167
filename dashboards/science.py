"""Science: the work-unit backlog, results coming back, and per-host
validity and credit."""

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash

from dashboards.panels import bargauge_panel, new_dashboard, query, stat_panel, timeseries_panel, to_json, warn_above

UID = "salvage-science"

RESULTS_RATE = "rate(salvage_science_results_total[$__rate_interval])"


def build() -> dict[str, Any]:
    board = (
        new_dashboard(UID, "salvage / Science", "Work units, results, validation and credit per host.")
        .with_row(dash.Row("Work"))
        .with_panel(
            stat_panel(
                "Work units",
                "none",
                [query("sum by (state) (salvage_science_workunits)", "{{state}}")],
                span=8,
            )
        )
        .with_panel(
            stat_panel(
                "Results per second",
                "none",
                [query("sum(rate(salvage_science_results_reported_total[$__rate_interval]))", "results/s")],
                span=8,
            )
        )
        .with_panel(
            stat_panel(
                "Science jobs",
                "none",
                [query('sum by (state) (salvage_jobs{kind="science"})', "{{state}}")],
                span=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "Work units by state",
                "none",
                [query("sum by (state) (salvage_science_workunits)", "{{state}}")],
                min_value=0,
            )
        )
        .with_panel(
            timeseries_panel(
                "Results per second",
                "none",
                [
                    query("sum(rate(salvage_science_results_reported_total[$__rate_interval]))", "received"),
                    query(f"sum by (validate_state) ({RESULTS_RATE})", "{{validate_state}}"),
                ],
                description="All results received, and by validation outcome.",
                min_value=0,
            )
        )
        .with_row(dash.Row("Hosts"))
        .with_panel(
            bargauge_panel(
                "Valid and invalid results per host",
                "none",
                [
                    query(
                        "sum by (host, validate_state) "
                        '(increase(salvage_science_results_total{validate_state=~"valid|invalid"}[$__range]))',
                        "{{host}} {{validate_state}}",
                        instant=True,
                    )
                ],
                description="Over the dashboard's time range.",
            )
        )
        .with_panel(
            bargauge_panel(
                "Invalid share per host",
                "percentunit",
                [
                    query(
                        "sum by (host) "
                        '(increase(salvage_science_results_total{validate_state="invalid"}[$__range]))'
                        " / sum by (host) "
                        '(increase(salvage_science_results_total{validate_state=~"valid|invalid"}[$__range]))',
                        "{{host}}",
                        instant=True,
                    )
                ],
                description="Invalid results among validated ones over the time range; the alert fires above 20%.",
                thresholds=warn_above(0.1, 0.2),
            )
        )
        .with_panel(
            bargauge_panel(
                "Credit per host",
                "none",
                [query("sum by (host) (salvage_science_credit_total)", "{{host}}", instant=True)],
                description="Cobblestones granted for valid results, all time.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Credit per hour per host",
                "none",
                [query("sum by (host) (rate(salvage_science_credit_total[$__rate_interval])) * 3600", "{{host}}")],
                description="Cobblestones per hour.",
                stacked=True,
                min_value=0,
            )
        )
        .with_panel(
            timeseries_panel(
                "Science tasks per host",
                "none",
                [query('sum by (host) (salvage_host_running{kind="science"})', "{{host}}")],
                stacked=True,
                min_value=0,
            )
        )
    )
    return to_json(board)
