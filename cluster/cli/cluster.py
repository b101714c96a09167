"""`salvage cluster ...`: start, inspect and stop the head of a cluster."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import click

from cluster.head import alertmanager
from cluster.head.prometheus import DEPLOY, PrometheusError, command
from cluster.head.state import (
    DEFAULT_HTTP_PORT,
    DEFAULT_RAY_PORT,
    LOOPBACK,
    HeadConfig,
    StateDir,
    StateError,
)
from workers.headclient import HeadClient, HeadError, HeadUnreachable, fingerprint
from workers.raynode import free_ports, port_in_use

from .common import head_client, state_dir_option, state_of
from .status_table import render_status

UP_TIMEOUT_S = 200.0  # a slow `ray start --head` may be retried once


@click.group()
def cluster():
    """Start, inspect and stop the head of a cluster."""


@cluster.command()
@state_dir_option
@click.option("--host", default=None,
              help="Address to listen on for PCs on your LAN: the API then speaks TLS with a CA the head "
                   "makes, and /metrics needs the token too. Without it the cluster stays on loopback, "
                   "for one machine. Either way every request needs the cluster's token.")
@click.option("--port", type=int, default=DEFAULT_RAY_PORT, show_default=True, help="Ray head (GCS) port.")
@click.option("--http-port", type=int, default=DEFAULT_HTTP_PORT, show_default=True,
              help="Port of the head's API, /metrics and Prometheus service discovery.")
@click.option("--prometheus", "with_prometheus", is_flag=True,
              help="Also run a local Prometheus with deploy/prometheus's config and alerts.")
@click.option("--prometheus-port", type=int, default=9090, show_default=True, help="Where that Prometheus listens.")
@click.option("--alertmanager", "with_alertmanager", is_flag=True,
              help="Also run Alertmanager (Debian's prometheus-alertmanager) so the alert rules reach someone; "
                   "implies --prometheus.")
@click.option("--alertmanager-port", type=int, default=alertmanager.DEFAULT_PORT, show_default=True,
              help="Where Alertmanager listens (on this machine's loopback only).")
@click.option("--alert-webhook", default=None, metavar="URL",
              help="Where alerts are sent (a webhook receiving Alertmanager's JSON); kept in "
                   "STATE_DIR/alertmanager/alertmanager.yml (mode 600), which may be edited for e-mail.")
@click.option("--foreground", is_flag=True, help="Run the coordinator in this process (for systemd).")
def up(state_dir, host, port, http_port, with_prometheus, prometheus_port, with_alertmanager, alertmanager_port,
       alert_webhook, foreground):
    """Start the Ray head and the coordinator, and print the join line for PCs."""
    os.umask(0o077)  # the state dir holds the token, the database and the logs: the owner's alone
    state = state_of(state_dir)
    try:
        state.create()
        state.check_token()  # made at the first `up`; an empty, short or readable one is refused
        state.tighten()
    except StateError as err:
        raise click.ClickException(str(err)) from None
    running = state.read_head()
    if state.running_pid() is not None and running is not None:
        click.echo(f"a cluster is already running from {state.path} (head {running.api_address}); nothing changed")
        _print_join(state, running)
        return
    bind = host or LOOPBACK
    try:
        socket.inet_aton(bind)
    except OSError:
        raise click.ClickException(f"host: expected an IPv4 address of this machine, got {bind!r}") from None
    checked = [("port", port), ("http-port", http_port)]
    if alert_webhook and not with_alertmanager:
        raise click.ClickException("alert-webhook: needs --alertmanager")
    with_prometheus = with_prometheus or with_alertmanager
    if with_alertmanager:
        am_dir = state.path / "alertmanager"
        try:
            alertmanager.binary()
            if alert_webhook or not (am_dir / "alertmanager.yml").exists():
                alertmanager.write_config(am_dir, alert_webhook)
        except alertmanager.AlertmanagerError as err:
            raise click.ClickException(str(err)) from None
    if with_prometheus:

        try:
            command(DEPLOY / "prometheus.yml", state.path, "")  # the binary is there
        except PrometheusError as err:
            raise click.ClickException(str(err)) from None
        checked.append(("prometheus-port", prometheus_port))
    if with_alertmanager:
        checked.append(("alertmanager-port", alertmanager_port))
    for flag, p in checked:
        where = {"alertmanager-port": alertmanager.LISTEN_HOST,
                 "prometheus-port": "127.0.0.1" if host else bind}.get(flag, bind)  # see HeadConfig.prometheus_host
        if not 0 < p < 65536:
            raise click.ClickException(f"{flag}: expected 1-65535, got {p}")
        if port_in_use(where, p):
            raise click.ClickException(f"{flag}: {where}:{p} is already in use (pick another with --{flag})")
    dashboard_port, client_port = free_ports(2, bind)
    config = HeadConfig(host=bind, ray_port=port, http_port=http_port, dashboard_port=dashboard_port,
                        client_port=client_port, lan=host is not None,
                        prometheus_port=prometheus_port if with_prometheus else None,
                        alertmanager_port=alertmanager_port if with_alertmanager else None)
    ca = None
    if config.lan:
        from cluster.head import tls  # the cryptography package, for LAN heads only

        ca = tls.ensure(state.tls_dir, bind).ca
    state.write_head(config)
    # -P: never the caller's directory on the import path (a stray .py there would be imported).
    coordinator = [sys.executable, "-P", "-m", "cluster.head", "--state-dir", str(state.path)]
    if foreground:  # systemd's unit: this process becomes the coordinator
        sys.stdout.flush()
        os.execv(sys.executable, coordinator)
    started = time.monotonic()
    log_path = state.logs / "coordinator.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(coordinator, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    client = HeadClient(config.host, config.http_port, timeout=2.0, ca_file=ca)
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no log)"]
            raise click.ClickException(f"the coordinator exited during start-up: {tail[0]} (log: {log_path})")
        try:
            client.get("/api/health")
            break
        except (HeadUnreachable, HeadError):
            if time.monotonic() - started > UP_TIMEOUT_S:
                proc.terminate()
                raise click.ClickException(
                    f"the head did not come up within {UP_TIMEOUT_S:.0f} s (log: {log_path})") from None
            time.sleep(0.3)
    click.echo(f"cluster up in {time.monotonic() - started:.1f} s: head API {config.api_address}, "
               f"Ray {config.ray_address}, dashboard http://{config.host}:{config.dashboard_port}")
    click.echo(f"state: {state.path}")
    if config.prometheus_port:
        click.echo(f"Prometheus on http://{config.prometheus_host}:{config.prometheus_port} "
                   f"(config and alerts from deploy/prometheus, data in {state.path / 'prometheus'})")
    if config.alertmanager_port:
        click.echo(f"Alertmanager on http://{alertmanager.LISTEN_HOST}:{config.alertmanager_port} "
                   f"(receivers in {state.path / 'alertmanager' / 'alertmanager.yml'})")
    _print_join(state, config)


def _print_join(state: StateDir, config: HeadConfig) -> None:
    """How a PC joins. The token itself is never printed nor put on a command line:
    it travels as a file (or on standard input) and stays mode 600."""
    if config.lan:
        ca = fingerprint((state.tls_dir / "ca.pem").read_text())
        click.echo(f"On each PC, copy the token file {state.token_file} to it (mode 600), then run:")
        click.echo(f"  salvage worker join {config.api_address} --token-file TOKEN_FILE --ca-fingerprint {ca}")
    else:
        click.echo("A PC on this machine joins with:")
        click.echo(f"  salvage worker join {config.api_address} --token-file {state.token_file}")


@cluster.command()
@state_dir_option
@click.option("--timeout", type=float, default=90.0, show_default=True, help="Seconds to wait before killing.")
def down(state_dir, timeout):
    """Stop what `cluster up` started (idempotent). Stored state is kept."""
    state = state_of(state_dir)
    pid = state.running_pid()
    if pid is None:
        click.echo(f"no cluster is running from {state.path}; nothing to stop")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while state.running_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if state.running_pid() is not None:
        os.kill(pid, signal.SIGKILL)  # its Ray head dies with it (parent-death signal)
        state.pid_file.unlink(missing_ok=True)
    config = state.read_head()
    while config and port_in_use(config.host, config.ray_port) and time.monotonic() < deadline + 45:
        time.sleep(0.5)  # the Ray head may still be draining: `up` right after must find the port free
    click.echo(f"cluster from {state.path} stopped; its state is kept")


@cluster.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with key `nodes`.")
def status(state_dir, as_json):
    """Who is in the cluster, with what hardware, in what state."""
    client, _ = head_client(state_of(state_dir))
    try:
        data = client.get("/api/status")
    except (HeadError, HeadUnreachable) as err:
        raise click.ClickException(f"head: {err}") from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    render_status(data)
