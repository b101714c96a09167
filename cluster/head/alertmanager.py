"""`cluster up --alertmanager`: a local Alertmanager (Debian's
`prometheus-alertmanager`) with deploy/alertmanager's configuration, so the
alerts Prometheus fires reach someone: the operator's webhook.

It listens on loopback only: its API silences alerts without any login, and
the Prometheus that feeds it runs on this same machine.
"""
from __future__ import annotations

import json
import shutil
import urllib.parse
from pathlib import Path

import yaml

from .templates import DEPLOY as SHIPPED

DEPLOY = SHIPPED / "alertmanager"
LISTEN_HOST = "127.0.0.1"  # never the LAN: see above
DEFAULT_PORT = 9093
PLACEHOLDER_URL = "https://webhook.example.invalid/salvage"
WEBHOOK_RECEIVER = "webhook"
BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, then upstream's


class AlertmanagerError(Exception):
    """A one-line reason naming the option or file at fault."""


def check_webhook(url: str) -> str:
    """The URL if Alertmanager can POST to it, else AlertmanagerError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlertmanagerError(f"alert-webhook: expected an http:// or https:// URL, got {url!r}")
    if url == PLACEHOLDER_URL:
        raise AlertmanagerError("alert-webhook: that is the shipped placeholder; give the URL of your own receiver")
    return url


def render(text: str, webhook_url: str | None) -> str:
    """deploy/alertmanager/alertmanager.yml with `webhook_url` for the webhook
    receiver's placeholder. With None the file must already name a real receiver
    (an operator's edited copy): alerts sent to the placeholder would reach no one."""
    config = yaml.safe_load(text)
    receiver = next((r for r in config.get("receivers", []) if r.get("name") == WEBHOOK_RECEIVER), None)
    hooks = (receiver or {}).get("webhook_configs") or []
    if webhook_url is not None:
        if not hooks:
            raise AlertmanagerError(f"alertmanager: the configuration has no {WEBHOOK_RECEIVER!r} receiver "
                                    "with a webhook_configs entry to send to")
        hooks[0]["url"] = check_webhook(webhook_url)
        kept = text.replace(PLACEHOLDER_URL, json.dumps(webhook_url))  # with the template's comments and examples
        if yaml.safe_load(kept) == config:
            return kept
    elif any(h.get("url") == PLACEHOLDER_URL for h in hooks):
        raise AlertmanagerError("alert-webhook: give the URL that alerts go to (--alert-webhook URL); "
                                "the shipped configuration only holds a placeholder")
    return yaml.safe_dump(config, sort_keys=False)


def write_config(out_dir: Path, webhook_url: str | None) -> Path:
    """The rendered configuration in `out_dir` (mode 600: a webhook URL often
    carries its own secret), and its path."""
    source = DEPLOY / "alertmanager.yml"
    if not source.exists():
        raise AlertmanagerError(f"alertmanager: its configuration is missing ({source}); "
                                "reinstall salvage from its source tree")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = out_dir / "alertmanager.yml"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(render(source.read_text(), webhook_url))
    return path


def binary() -> str:
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    raise AlertmanagerError("alertmanager: no `prometheus-alertmanager` binary on PATH "
                            "(apt-get install prometheus-alertmanager)")


def command(config: Path, data_dir: Path, listen: str) -> list[str]:
    """Alertmanager alone: its own storage, and no cluster listener (it would open
    port 9094 on every interface to gossip with peers there are none of)."""
    return [binary(), f"--config.file={config}", f"--storage.path={data_dir}", f"--web.listen-address={listen}",
            "--cluster.listen-address="]


def add_alerting(config: dict, alertmanager: str) -> dict:
    """Point a Prometheus configuration (as loaded from YAML) at the Alertmanager at
    HOST:PORT; returns the same dict."""
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config
