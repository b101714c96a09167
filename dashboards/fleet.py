"""Fleet overview: which hosts are up, what hardware and speed the pool has,
and what runs where."""

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash

from dashboards.panels import (
    bargauge_panel,
    new_dashboard,
    query,
    stat_panel,
    table_panel,
    timeseries_panel,
    to_json,
    warn_above,
)

UID = "salvage-fleet"

# Alive hosts only: a lost host's last measured speed is not capacity.
ALIVE_SPEED = "salvage_host_speed_flops and on (host) (salvage_host_up == 1)"


def build() -> dict[str, Any]:
    board = (
        new_dashboard(UID, "salvage / Fleet overview", "Hosts, GPUs, measured speed and what runs where.")
        .with_row(dash.Row("Cluster"))
        .with_panel(
            stat_panel(
                "Hosts",
                "none",
                [query("sum by (state) (salvage_hosts)", "{{state}}")],
                description="Hosts the coordinator knows: alive, lost (stopped answering) and left (removed on purpose).",
            )
        )
        .with_panel(
            stat_panel(
                "Coordinator",
                "none",
                [query('up{job="salvage-head"}', "{{instance}}")],
                span=3,
                thresholds=[(None, "red"), (1, "green")],
                mappings={"0": "DOWN", "1": "UP"},
            )
        )
        .with_panel(stat_panel("GPUs", "none", [query("sum(salvage_gpus) or vector(0)", "GPUs")], span=3))
        .with_panel(
            stat_panel(
                "Measured compute",
                "flops",
                [query(f"sum({ALIVE_SPEED}) or vector(0)", "alive hosts")],
                description="Sum of the FLOP rate each alive host measured when it joined.",
            )
        )
        .with_panel(
            stat_panel(
                "Jobs running",
                "none",
                [query('sum by (kind) (salvage_jobs{state="running"})', "{{kind}}")],
            )
        )
        .with_row(dash.Row("Capacity"))
        .with_panel(
            bargauge_panel(
                "GPUs by model",
                "none",
                [query("sum by (model) (salvage_gpus)", "{{model}}", instant=True)],
            )
        )
        .with_panel(
            timeseries_panel(
                "Measured compute per host",
                "flops",
                [query(ALIVE_SPEED, "{{host}}")],
                span=8,
                stacked=True,
                min_value=0,
            )
        )
        .with_panel(
            bargauge_panel(
                "Measured speed per device",
                "flops",
                [query("salvage_device_speed_flops", "{{host}} {{device}}", instant=True)],
            )
        )
        .with_panel(
            timeseries_panel(
                "Ray resources in use",
                "percentunit",
                [
                    query(
                        "sum by (resource) (salvage_ray_resource_used) / sum by (resource) (salvage_ray_resource_total)",
                        "{{resource}}",
                    )
                ],
                span=24,
                min_value=0,
                max_value=1,
            )
        )
        .with_row(dash.Row("What runs where"))
        .with_panel(
            timeseries_panel(
                "Tasks running per host",
                "none",
                [query("sum by (host, kind) (salvage_host_running)", "{{host}} {{kind}}")],
                stacked=True,
                bars=True,
                min_value=0,
            )
        )
        .with_panel(
            table_panel(
                "Agent state per host",
                [query("max by (host, state) (salvage_agent_state == 1)", instant=True, as_table=True)],
                description="What each PC's agent is doing now (starting, idle, busy, paused by its owner's policy, leaving).",
            )
        )
        .with_panel(
            timeseries_panel(
                "Jobs by state",
                "none",
                [query("sum by (kind, state) (salvage_jobs)", "{{kind}} {{state}}")],
                span=24,
                min_value=0,
            )
        )
        .with_row(dash.Row("Hosts"))
        .with_panel(
            timeseries_panel(
                "CPU utilization per host",
                "percentunit",
                [query("salvage_host_cpu_utilization_ratio", "{{host}}")],
                span=8,
                min_value=0,
                max_value=1,
            )
        )
        .with_panel(
            timeseries_panel(
                "Memory used per host",
                "percentunit",
                [query("salvage_host_memory_used_bytes / salvage_host_memory_total_bytes", "{{host}}")],
                span=8,
                min_value=0,
                max_value=1,
                thresholds=warn_above(0.8, 0.95),
            )
        )
        .with_panel(
            timeseries_panel(
                "Disk used per host",
                "percentunit",
                [query("salvage_host_disk_used_bytes / salvage_host_disk_total_bytes", "{{host}}")],
                span=8,
                min_value=0,
                max_value=1,
                thresholds=warn_above(0.8, 0.95),
            )
        )
        .with_panel(
            timeseries_panel(
                "Agent poll time (p95)",
                "s",
                [
                    query(
                        "histogram_quantile(0.95, sum by (host, le) "
                        "(rate(salvage_agent_poll_duration_seconds_bucket[$__rate_interval])))",
                        "{{host}}",
                    )
                ],
                description="How long each agent takes to read its hardware; slow polls point at a struggling PC or driver.",
                min_value=0,
            )
        )
        .with_panel(
            timeseries_panel(
                "Coordinator loop time",
                "s",
                [
                    query(
                        "histogram_quantile(0.5, sum by (le) "
                        "(rate(salvage_coordinator_loop_duration_seconds_bucket[$__rate_interval])))",
                        "p50",
                    ),
                    query(
                        "histogram_quantile(0.95, sum by (le) "
                        "(rate(salvage_coordinator_loop_duration_seconds_bucket[$__rate_interval])))",
                        "p95",
                    ),
                ],
                min_value=0,
            )
        )
        .with_row(dash.Row("BOINC on the PCs"))
        .with_panel(
            timeseries_panel(
                "BOINC tasks running per host",
                "none",
                [query('sum by (host) (salvage_boinc_tasks{state="running"})', "{{host}}")],
                description="Tasks of the owners' own BOINC projects running on the PCs whose agents manage "
                "their BOINC client (`worker join --boinc`): the devices salvage leaves idle, put to use.",
                span=8,
                stacked=True,
                min_value=0,
            )
        )
        .with_panel(
            timeseries_panel(
                "Devices salvage holds from BOINC",
                "none",
                [query("sum by (host, resource, reason) (salvage_boinc_held)", "{{host}} {{resource}} ({{reason}})")],
                description="1 while salvage keeps a PC's BOINC client off a resource: its own work runs there "
                "(work) or the owner's policy paused the PC (paused). BOINC gets it back once idle.",
                span=8,
                min_value=0,
                max_value=1,
            )
        )
        .with_panel(
            stat_panel(
                "BOINC clients reachable",
                "none",
                [query("sum(salvage_boinc_up) or vector(0)", "reachable"),
                 query("count(salvage_boinc_up == 0) or vector(0)", "not reachable")],
                description="A client that is not running or refuses the password shows in `salvage boinc status`.",
                span=4,
            )
        )
        .with_panel(
            stat_panel(
                "BOINC credit",
                "none",
                [query("sum by (host) (salvage_boinc_project_host_credit_total)", "{{host}}")],
                description="Credit each PC has earned at its BOINC projects, as the projects report it.",
                span=4,
            )
        )
    )
    return to_json(board)
