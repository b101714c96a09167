"""`cluster up --prometheus`: a local Prometheus with deploy/prometheus's
configuration, pointed at this head; the embedded default for monitoring."""
from __future__ import annotations

import shutil
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
SHIPPED_HEAD = "127.0.0.2:8470"


class PrometheusError(Exception):
    pass


def write_config(out_dir: Path, head: str) -> Path:
    """deploy/prometheus/*.yml with the head's address put in; nothing else changes."""
    if not (DEPLOY / "prometheus.yml").exists():
        raise PrometheusError(f"prometheus: its configuration is missing ({DEPLOY}); "
                              "reinstall salvage from its source tree")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "prometheus.yml").write_text((DEPLOY / "prometheus.yml").read_text().replace(SHIPPED_HEAD, head))
    shutil.copy(DEPLOY / "alerts.yml", out_dir / "alerts.yml")
    return out_dir / "prometheus.yml"


def command(config: Path, data_dir: Path, listen: str) -> list[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError("prometheus: no `prometheus` binary on PATH (apt-get install prometheus)")
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data_dir}", f"--web.listen-address={listen}"]
