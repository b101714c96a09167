"""GPU health: temperature, power, load, clocks, throttling and errors per
GPU, filtered by host and GPU index."""

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash

from dashboards.panels import (
    label_variable,
    new_dashboard,
    query,
    stat_panel,
    table_panel,
    timeseries_panel,
    to_json,
    warn_above,
)

UID = "salvage-gpu-health"

# Every GPU series is filtered by the two variables.
GPU = '{host=~"$host", gpu=~"$gpu"}'
LEGEND = "{{host}} gpu{{gpu}}"


def build() -> dict[str, Any]:
    board = (
        new_dashboard(UID, "salvage / GPU health", "Temperature, power, load, clocks, throttling and errors per GPU.")
        .with_variable(label_variable("host", "Host", "salvage_gpu_info"))
        .with_variable(label_variable("gpu", "GPU", 'salvage_gpu_info{host=~"$host"}'))
        .with_row(dash.Row("Now"))
        .with_panel(
            stat_panel(
                "Hottest GPU",
                "celsius",
                [query(f"max(salvage_gpu_temperature_celsius{GPU})", "hottest")],
                thresholds=warn_above(80, 85),
            )
        )
        .with_panel(
            stat_panel(
                "Throttled GPUs",
                "none",
                [query(f"sum(max by (host, gpu) (salvage_gpu_throttle{GPU}))", "throttled")],
                description="GPUs slowed down now for any reason (power cap, heat, hardware slowdown).",
                thresholds=[(None, "green"), (1, "orange")],
            )
        )
        .with_panel(
            stat_panel(
                "Lost GPUs",
                "none",
                [query(f"sum(salvage_gpu_lost{GPU})", "lost")],
                description="GPUs that fell off the bus; they need a reboot.",
                thresholds=[(None, "green"), (1, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "Xid errors in range",
                "none",
                [query(f"sum(increase(salvage_gpu_xid_errors_total{GPU}[$__range]))", "Xid")],
                thresholds=[(None, "green"), (1, "red")],
            )
        )
        .with_panel(
            table_panel(
                "GPUs",
                [query(f"salvage_gpu_info{GPU}", instant=True, as_table=True)],
                span=24,
                height=6,
            )
        )
        .with_row(dash.Row("Heat and power"))
        .with_panel(
            timeseries_panel(
                "Temperature",
                "celsius",
                [query(f"salvage_gpu_temperature_celsius{GPU}", LEGEND)],
                thresholds=warn_above(80, 85),
            )
        )
        .with_panel(
            timeseries_panel(
                "Fan speed",
                "percentunit",
                [query(f"salvage_gpu_fan_ratio{GPU}", LEGEND)],
                min_value=0,
                max_value=1,
            )
        )
        .with_panel(
            timeseries_panel(
                "Power draw and limit",
                "watt",
                [
                    query(f"salvage_gpu_power_watts{GPU}", f"{LEGEND} draw"),
                    query(f"salvage_gpu_power_limit_watts{GPU}", f"{LEGEND} limit"),
                ],
                min_value=0,
                dashed=".* limit$",
            )
        )
        .with_panel(
            timeseries_panel(
                "Throttle reasons",
                "none",
                [query(f"max by (host, gpu, reason) (salvage_gpu_throttle{GPU})", f"{LEGEND} {{{{reason}}}}")],
                description="1 while the GPU is slowed down for that reason: power_cap, sw_thermal, hw_thermal, hw_slowdown.",
                min_value=0,
                max_value=1,
            )
        )
        .with_row(dash.Row("Load"))
        .with_panel(
            timeseries_panel(
                "Utilization",
                "percentunit",
                [query(f"salvage_gpu_utilization_ratio{GPU}", LEGEND)],
                min_value=0,
                max_value=1,
            )
        )
        .with_panel(
            timeseries_panel(
                "Memory used and total",
                "bytes",
                [
                    query(f"salvage_gpu_memory_used_bytes{GPU}", f"{LEGEND} used"),
                    query(f"salvage_gpu_memory_total_bytes{GPU}", f"{LEGEND} total"),
                ],
                min_value=0,
                dashed=".* total$",
            )
        )
        .with_panel(
            timeseries_panel(
                "SM clock",
                "hertz",
                [query(f"salvage_gpu_sm_clock_hertz{GPU}", LEGEND)],
                min_value=0,
            )
        )
        .with_panel(
            timeseries_panel(
                "Errors",
                "none",
                [
                    query(f"increase(salvage_gpu_xid_errors_total{GPU}[$__rate_interval])", f"{LEGEND} Xid"),
                    query(f"increase(salvage_gpu_ecc_errors_total{GPU}[$__rate_interval])", f"{LEGEND} ECC"),
                    query(f"salvage_gpu_lost{GPU}", f"{LEGEND} lost"),
                ],
                description="Xid and ECC errors per interval (ECC only on cards that have it), and 1 while a GPU is lost.",
                bars=True,
                min_value=0,
            )
        )
    )
    return to_json(board)
