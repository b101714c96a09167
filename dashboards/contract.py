"""The metrics the dashboards and alert rules rely on, as Prometheus stores them.

The exporters (workers' agent, the head's coordinator) implement this list.
Labels are listed as they appear after scraping: agent series carry the
`host` target label from service discovery; every series carries `job` and
`instance`.
"""

from dataclasses import dataclass

TARGET_LABELS = frozenset({"job", "instance"})
# http_sd gives each agent target its `host` label.
AGENT_TARGET_LABELS = TARGET_LABELS | {"host"}


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "gauge", "counter" or "histogram"
    labels: frozenset[str]  # exporter labels plus target labels


def _agent(name: str, kind: str, *labels: str) -> Metric:
    return Metric(name, kind, AGENT_TARGET_LABELS | set(labels))


def _head(name: str, kind: str, *labels: str) -> Metric:
    return Metric(name, kind, TARGET_LABELS | set(labels))


METRICS: tuple[Metric, ...] = (
    # Written by Prometheus itself for every target.
    Metric("up", "gauge", AGENT_TARGET_LABELS),
    # Agent on each PC.
    _agent("salvage_gpu_info", "gauge", "gpu", "uuid", "model", "compute_capability", "driver"),
    _agent("salvage_gpu_temperature_celsius", "gauge", "gpu"),
    _agent("salvage_gpu_utilization_ratio", "gauge", "gpu"),
    _agent("salvage_gpu_memory_used_bytes", "gauge", "gpu"),
    _agent("salvage_gpu_memory_total_bytes", "gauge", "gpu"),
    _agent("salvage_gpu_power_watts", "gauge", "gpu"),
    _agent("salvage_gpu_power_limit_watts", "gauge", "gpu"),
    _agent("salvage_gpu_fan_ratio", "gauge", "gpu"),
    _agent("salvage_gpu_sm_clock_hertz", "gauge", "gpu"),
    _agent("salvage_gpu_throttle", "gauge", "gpu", "reason"),
    _agent("salvage_gpu_lost", "gauge", "gpu"),
    _agent("salvage_gpu_ecc_errors_total", "counter", "gpu"),
    _agent("salvage_gpu_xid_errors_total", "counter", "gpu"),
    _agent("salvage_host_cpu_utilization_ratio", "gauge"),
    _agent("salvage_host_memory_used_bytes", "gauge"),
    _agent("salvage_host_memory_total_bytes", "gauge"),
    _agent("salvage_host_disk_used_bytes", "gauge"),
    _agent("salvage_host_disk_total_bytes", "gauge"),
    _agent("salvage_agent_state", "gauge", "state"),
    _agent("salvage_agent_paused", "gauge", "reason"),
    _agent("salvage_gpu_paused", "gauge", "gpu", "reason"),
    _agent("salvage_agent_poll_duration_seconds", "histogram"),
    _agent("salvage_device_speed_flops", "gauge", "device"),
    # The PC's own BOINC client, where its agent manages one (workers/boinc/metrics.py).
    _agent("salvage_boinc_up", "gauge"),
    _agent("salvage_boinc_mode", "gauge", "resource", "mode"),
    _agent("salvage_boinc_owner_mode", "gauge", "resource", "mode"),
    _agent("salvage_boinc_held", "gauge", "resource", "reason"),
    _agent("salvage_boinc_holds_total", "counter", "resource"),
    _agent("salvage_boinc_tasks", "gauge", "state"),
    _agent("salvage_boinc_project_info", "gauge", "project_url", "name"),
    _agent("salvage_boinc_project_host_credit_total", "counter", "project_url"),
    # Coordinator on the head.
    _head("salvage_hosts", "gauge", "state"),
    _head("salvage_gpus", "gauge", "model"),
    _head("salvage_host_up", "gauge", "host"),
    _head("salvage_host_speed_flops", "gauge", "host"),
    _head("salvage_host_gpus", "gauge", "host"),
    _head("salvage_host_running", "gauge", "host", "kind"),
    _head("salvage_ray_resource_total", "gauge", "resource"),
    _head("salvage_ray_resource_used", "gauge", "resource"),
    _head("salvage_jobs", "gauge", "kind", "state"),
    _head("salvage_coordinator_up", "gauge"),
    _head("salvage_coordinator_loop_duration_seconds", "histogram"),
    # Training jobs are told apart by `job_id`: a `job` label would clash
    # with Prometheus's own and be renamed `exported_job` on scrape.
    _head("salvage_train_iteration", "gauge", "job_id"),
    _head("salvage_train_loss", "gauge", "job_id", "split"),
    _head("salvage_train_tokens_per_second", "gauge", "job_id", "worker"),
    _head("salvage_train_last_progress_timestamp_seconds", "gauge", "job_id"),
    _head("salvage_train_round_duration_seconds", "gauge", "job_id"),
    _head("salvage_train_wait_seconds_total", "counter", "job_id", "worker"),
    _head("salvage_train_bytes_total", "counter", "job_id", "direction"),
    _head("salvage_science_workunits", "gauge", "state"),
    _head("salvage_science_results_total", "counter", "host", "validate_state"),
    _head("salvage_science_credit_total", "counter", "host"),
    _head("salvage_science_results_reported_total", "counter"),
)


def series_labels() -> dict[str, frozenset[str]]:
    """Every series name Prometheus will hold, with its labels.

    A histogram stands for its `_bucket` (with `le`), `_sum` and `_count`.
    """
    out: dict[str, frozenset[str]] = {}
    for metric in METRICS:
        if metric.kind == "histogram":
            out[f"{metric.name}_bucket"] = metric.labels | {"le"}
            out[f"{metric.name}_sum"] = metric.labels
            out[f"{metric.name}_count"] = metric.labels
        else:
            out[metric.name] = metric.labels
    return out
