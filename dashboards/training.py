"""Training: progress, loss and throughput of the GPT training jobs, and for jobs
across the pool, what each round costs: its wall time, each worker's wait for the
others and the bytes moved."""

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash

from dashboards.panels import label_variable, new_dashboard, query, stat_panel, timeseries_panel, to_json, warn_above

UID = "salvage-training"

JOB = '{job_id=~"$job_id"}'


def build() -> dict[str, Any]:
    board = (
        new_dashboard(UID, "salvage / Training", "Progress, loss and tokens per second per training job.")
        .with_variable(label_variable("job_id", "Training job", "salvage_train_iteration"))
        .with_row(dash.Row("Progress"))
        .with_panel(
            stat_panel(
                "Training jobs",
                "none",
                [query('sum by (state) (salvage_jobs{kind="train"})', "{{state}}")],
                span=8,
            )
        )
        .with_panel(
            stat_panel("Iteration", "none", [query(f"salvage_train_iteration{JOB}", "{{job_id}}")], span=8)
        )
        .with_panel(
            stat_panel(
                "Since last progress",
                "s",
                [query(f"time() - salvage_train_last_progress_timestamp_seconds{JOB}", "{{job_id}}")],
                description="Time since each running job last finished an iteration; the alert fires at 10 minutes.",
                span=8,
                thresholds=warn_above(300, 600),
            )
        )
        .with_panel(
            timeseries_panel(
                "Loss",
                "none",
                [query(f"salvage_train_loss{JOB}", "{{job_id}} {{split}}")],
                description="Training and validation loss (cross-entropy, nats per token).",
                dashed=".* val$",
            )
        )
        .with_panel(
            timeseries_panel("Iterations over time", "none", [query(f"salvage_train_iteration{JOB}", "{{job_id}}")], min_value=0)
        )
        .with_row(dash.Row("Throughput"))
        .with_panel(
            timeseries_panel(
                "Tokens per second per worker",
                "none",
                [query(f"salvage_train_tokens_per_second{JOB}", "{{job_id}} {{worker}}")],
                description="Stacked, so the top is the job's total.",
                span=24,
                stacked=True,
                min_value=0,
            )
        )
        .with_row(dash.Row("Pool rounds"))
        .with_panel(
            timeseries_panel(
                "Round duration",
                "s",
                [query(f"salvage_train_round_duration_seconds{JOB}", "{{job_id}}")],
                description="Wall time of each job's last round: local steps, transfers and the outer step.",
                span=8,
                min_value=0,
            )
        )
        .with_panel(
            timeseries_panel(
                "Waiting for the others",
                "percentunit",
                [query(f"rate(salvage_train_wait_seconds_total{JOB}[2m])", "{{job_id}} {{worker}}")],
                description="Share of time each worker sat idle at round ends; high means its steps were misjudged.",
                span=8,
                min_value=0,
            )
        )
        .with_panel(
            timeseries_panel(
                "Bytes moved",
                "Bps",
                [query(f"rate(salvage_train_bytes_total{JOB}[2m])", "{{job_id}} {{direction}}")],
                description="Global parameters down and deltas up, per second.",
                span=8,
                min_value=0,
            )
        )
    )
    return to_json(board)
