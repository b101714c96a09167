"""`salvage cluster ...`: start, inspect and stop the head of a cluster."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from cluster.head import alertmanager, grafana
from cluster.head.prometheus import DEPLOY, PrometheusError, command
from cluster.head.state import (
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_RAY_CLIENT_PORT,
    DEFAULT_RAY_PORT,
    LOOPBACK,
    HeadConfig,
    StateDir,
    StateError,
)
from workers.headclient import HeadClient, HeadError, HeadUnreachable, fingerprint
from workers.raynode import HEAD_NODE_PORTS, free_ports, is_loopback, port_in_use

from .common import env_option, get, head_options, node_port_options, state_dir_option, state_of
from .status_table import render_status

UP_TIMEOUT_S = 200.0  # a slow `ray start --head` may be retried once


@click.group()
def cluster():
    """Start, inspect and stop the head of a cluster."""


@cluster.command()
@state_dir_option
@env_option("--host", default=None,
            help="Address to listen on for PCs on your LAN: the API then speaks TLS with a CA the head "
                 "makes, and /metrics needs the token too. Without it the cluster stays on loopback, "
                 "for one machine. Either way every request needs the cluster's token.")
@env_option("--port", type=int, default=DEFAULT_RAY_PORT, show_default=True, help="Ray head (GCS) port.")
@env_option("--http-port", type=int, default=DEFAULT_HTTP_PORT, show_default=True,
            help="Port of the head's API, its status page, /metrics and Prometheus service discovery.")
@env_option("--dashboard-port", type=int, default=None, metavar="PORT",
            help=f"Ray's dashboard [default: {DEFAULT_DASHBOARD_PORT}; on loopback any free port].")
@env_option("--ray-client-server-port", type=int, default=None, metavar="PORT",
            help=f"Ray's client server (ray://) [default: {DEFAULT_RAY_CLIENT_PORT}; on loopback any free port].")
@node_port_options(HEAD_NODE_PORTS, "the head")
@env_option("--prometheus", "with_prometheus", is_flag=True,
            help="Also run a local Prometheus with the shipped config and alerts, pointed at this head, "
                 "and write Grafana provisioning for it in STATE_DIR/grafana.")
@env_option("--prometheus-port", type=int, default=9090, show_default=True, help="Where that Prometheus listens.")
@env_option("--alertmanager", "with_alertmanager", is_flag=True,
            help="Also run Alertmanager (Debian's prometheus-alertmanager) so the alert rules reach someone; "
                 "implies --prometheus.")
@env_option("--alertmanager-port", type=int, default=alertmanager.DEFAULT_PORT, show_default=True,
            help="Where Alertmanager listens (on this machine's loopback only).")
@env_option("--alert-webhook", default=None, metavar="URL",
            help="Where alerts are sent (a webhook receiving Alertmanager's JSON); kept in "
                 "STATE_DIR/alertmanager/alertmanager.yml (mode 600), which may be edited for e-mail.")
@env_option("--foreground", is_flag=True, help="Run the coordinator in this process (for systemd).")
def up(state_dir, host, port, http_port, dashboard_port, ray_client_server_port, ray_ports, with_prometheus,
       prometheus_port, with_alertmanager, alertmanager_port, alert_webhook, foreground):
    """Start the Ray head and the coordinator, and print the join line for PCs.

    Every option may also come from the environment ([env: ...] below), as a
    systemd unit's EnvironmentFile sets them.
    """
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
    loopback = is_loopback(bind)  # several clusters may share this machine: Ray's own ports are picked free
    node_ports = ray_ports.resolved(HEAD_NODE_PORTS, loopback)
    try:
        node_ports.check()
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    if dashboard_port is None:
        dashboard_port = 0 if loopback else DEFAULT_DASHBOARD_PORT
    if ray_client_server_port is None:
        ray_client_server_port = 0 if loopback else DEFAULT_RAY_CLIENT_PORT
    ray_extra = {"dashboard-port": dashboard_port, "ray-client-server-port": ray_client_server_port}
    checked = [("port", port), ("http-port", http_port), *((f, p) for f, p in ray_extra.items() if p),
               *node_ports.fixed().items()]  # 0: picked free below
    if alert_webhook and not with_alertmanager:
        raise click.ClickException("alert-webhook: needs --alertmanager")
    with_prometheus = with_prometheus or with_alertmanager
    if with_alertmanager:
        am_dir = state.path / "alertmanager"
        try:
            alertmanager.binary()
            # Written once, then the operator's (an e-mail receiver, say): a unit's env file passes the same
            # --alert-webhook at every start, and only a new URL writes it afresh from the template.
            config_file = am_dir / "alertmanager.yml"
            if not config_file.exists() or (alert_webhook and alert_webhook != _webhook_in(config_file)):
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
    free = iter(free_ports(2, bind))
    config = HeadConfig(host=bind, ray_port=port, http_port=http_port, dashboard_port=dashboard_port or next(free),
                        client_port=ray_client_server_port or next(free), lan=host is not None,
                        prometheus_port=prometheus_port if with_prometheus else None,
                        alertmanager_port=alertmanager_port if with_alertmanager else None, node_ports=node_ports)
    ca = None
    if config.lan:
        from cluster.head import tls  # the cryptography package, for LAN heads only

        ca = tls.ensure(state.tls_dir, bind).ca
    state.write_head(config)
    if config.prometheus_port:
        grafana.write_provisioning(state.path / "grafana" / "provisioning",
                                   f"http://{config.prometheus_host}:{config.prometheus_port}")
    # -P: never the caller's directory on the import path (a stray .py there would be imported).
    coordinator = [sys.executable, "-P", "-m", "cluster.head", "--state-dir", str(state.path)]
    if foreground:  # systemd's unit: this process becomes the coordinator; its journal shows how to join
        click.echo(f"starting the head: API {config.api_address}, Ray {config.ray_address}, state {state.path}")
        _print_lan_ports(config)
        _print_join(state, config)
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
                   f"(config, alerts and data in {state.path / 'prometheus'}; "
                   f"Grafana provisioning for it in {state.path / 'grafana' / 'provisioning'})")
    if config.alertmanager_port:
        click.echo(f"Alertmanager on http://{alertmanager.LISTEN_HOST}:{config.alertmanager_port} "
                   f"(receivers in {state.path / 'alertmanager' / 'alertmanager.yml'})")
    _print_lan_ports(config)
    _print_join(state, config)


def _webhook_in(path: Path) -> str | None:
    """The webhook URL Alertmanager's configuration at `path` sends to (None if it names none)."""
    try:
        config = yaml.safe_load(path.read_text())
        receiver = next(r for r in config["receivers"] if r["name"] == alertmanager.WEBHOOK_RECEIVER)
        return receiver["webhook_configs"][0]["url"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, StopIteration):
        return None


def _print_lan_ports(config: HeadConfig) -> None:
    """What a firewall on the head must let the PCs reach (docs/operator.md has the whole table)."""
    if not config.lan or is_loopback(config.host):
        return
    n = config.node_ports
    click.echo(f"PCs reach this head on TCP ports {config.ray_port}, {config.http_port}, {n.node_manager}, "
               f"{n.object_manager} and {n.min_worker}-{n.max_worker}; open them to your LAN only")


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
@head_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with key `nodes`.")
def status(head, as_json):
    """Who is in the cluster, with what hardware, in what state.

    On the head it asks the cluster running from --state-dir; from anywhere
    else, give --head HOST:PORT with the token (and --ca-fingerprint on a LAN).
    """
    data = get(head, "/api/status")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    render_status(data)
