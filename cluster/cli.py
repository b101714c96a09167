"""`salvage`: the command line for the head, the workers and the jobs."""
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

from workers.headclient import HeadClient, HeadError, HeadUnreachable
from workers.raynode import free_ports, port_in_use

from .state import DEFAULT_HTTP_PORT, DEFAULT_RAY_PORT, LOOPBACK, HeadConfig, StateDir, StateError, default_state_dir

UP_TIMEOUT_S = 200.0  # a slow `ray start --head` may be retried once

state_dir_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), default=None,
    help="Where the cluster keeps its database, logs and token "
         "[default: $SALVAGE_STATE_DIR or ~/.salvage].")


def _state(path: Path | None) -> StateDir:
    return StateDir(path or default_state_dir())


def head_client(state: StateDir, timeout: float = 10.0) -> tuple[HeadClient, HeadConfig]:
    """A client for the running cluster of this state dir, or a one-line error."""
    config = state.read_head()
    if config is None or state.running_pid() is None:
        raise click.ClickException(f"no cluster is running from {state.path} (start one with `salvage cluster up`)")
    token = state.token() if config.auth else None
    return HeadClient(config.host, config.http_port, token, timeout=timeout), config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """salvage: run a volunteer compute cluster of recycled PCs.

    \b
    On the head:   salvage cluster up            (prints the join line)
    On each PC:    salvage worker join HEAD:PORT
    Anywhere:      salvage cluster status
    Try it all on this machine: salvage demo
    """


@main.group()
def cluster():
    """Start, inspect and stop the head of a cluster."""


@cluster.command()
@state_dir_option
@click.option("--host", default=None,
              help="Address to listen on for PCs on your LAN (turns on token authentication). "
                   "Without it the cluster stays on loopback, for one machine.")
@click.option("--port", type=int, default=DEFAULT_RAY_PORT, show_default=True, help="Ray head (GCS) port.")
@click.option("--http-port", type=int, default=DEFAULT_HTTP_PORT, show_default=True,
              help="Port of the head's API, /metrics and Prometheus service discovery.")
@click.option("--prometheus", "with_prometheus", is_flag=True,
              help="Also run a local Prometheus with deploy/prometheus's config and alerts.")
@click.option("--prometheus-port", type=int, default=9090, show_default=True, help="Where that Prometheus listens.")
@click.option("--foreground", is_flag=True, help="Run the coordinator in this process (for systemd).")
def up(state_dir, host, port, http_port, with_prometheus, prometheus_port, foreground):
    """Start the Ray head and the coordinator, and print the join line for PCs."""
    state = _state(state_dir)
    try:
        state.create()
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
    if with_prometheus:
        from .prometheus import DEPLOY, PrometheusError, command

        try:
            command(DEPLOY / "prometheus.yml", state.path, "")  # the binary is there
        except PrometheusError as err:
            raise click.ClickException(str(err)) from None
        checked.append(("prometheus-port", prometheus_port))
    for flag, p in checked:
        if not 0 < p < 65536:
            raise click.ClickException(f"{flag}: expected 1-65535, got {p}")
        if port_in_use(bind, p):
            raise click.ClickException(f"{flag}: {bind}:{p} is already in use (pick another with --{flag})")
    dashboard_port, client_port = free_ports(2, bind)
    config = HeadConfig(host=bind, ray_port=port, http_port=http_port, dashboard_port=dashboard_port,
                        client_port=client_port, auth=host is not None,
                        prometheus_port=prometheus_port if with_prometheus else None)
    if config.auth:
        state.token()  # generated once, kept for every later `up`
    state.write_head(config)
    if foreground:
        from .coordinator import Coordinator

        code = Coordinator(state, config).run()
        sys.stdout.flush()
        os._exit(code)  # as the daemon does: Ray's exit hooks could wait on the dead head
    started = time.monotonic()
    log_path = state.logs / "coordinator.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.coordinator", "--state-dir", str(state.path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    client = HeadClient(config.host, config.http_port, timeout=2.0)
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
                raise click.ClickException(f"the head did not come up within {UP_TIMEOUT_S:.0f} s (log: {log_path})")
            time.sleep(0.3)
    click.echo(f"cluster up in {time.monotonic() - started:.1f} s: head API {config.api_address}, "
               f"Ray {config.ray_address}, dashboard http://{config.host}:{config.dashboard_port}")
    click.echo(f"state: {state.path}")
    if config.prometheus_port:
        click.echo(f"Prometheus on http://{config.host}:{config.prometheus_port} "
                   f"(config and alerts from deploy/prometheus, data in {state.path / 'prometheus'})")
    _print_join(state, config)


def _print_join(state: StateDir, config: HeadConfig) -> None:
    line = f"salvage worker join {config.api_address}"
    if config.auth:
        line += f" --token {state.token()}"
    click.echo("On each PC, run:")
    click.echo(f"  {line}")


@cluster.command()
@state_dir_option
@click.option("--timeout", type=float, default=90.0, show_default=True, help="Seconds to wait before killing.")
def down(state_dir, timeout):
    """Stop what `cluster up` started (idempotent). Stored state is kept."""
    state = _state(state_dir)
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
    client, _ = head_client(_state(state_dir))
    try:
        data = client.get("/api/status")
    except (HeadError, HeadUnreachable) as err:
        raise click.ClickException(f"head: {err}") from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from .status import render_status

    render_status(data)


@main.group()
def worker():
    """Run the agent on a PC so it joins a cluster."""


@worker.command()
@click.argument("address")
@click.option("--name", default=None, help="This PC's name in the cluster [default: its hostname].")
@click.option("--token", envvar="SALVAGE_TOKEN", default=None,
              help="The cluster's token, as printed by `cluster up --host` [env: SALVAGE_TOKEN].")
@click.option("--metrics-port", type=int, default=9470, show_default=True,
              help="Port for this PC's /metrics (0 picks a free one).")
@click.option("--simulate-gpus", "simulate", default=None, metavar="SPEC",
              help="Stand in for NVML: 'GTX 1060:3GB:6.1,RTX 3060:12GB:8.6', '' for CPU-only, "
                   "or @file.json (re-read at every poll; may hold live sensor values).")
@click.option("--num-cpus", type=int, default=None, help="CPU cores to offer [default: all].")
@click.option("--node-ip", default=None, help="This PC's address as the head sees it [default: detected].")
@click.option("--poll-interval", type=float, default=5.0, show_default=True, help="Seconds between hardware polls.")
@click.option("--log-dir", type=click.Path(path_type=Path), default=None,
              help="Where the agent's Ray node logs and its last speed measurement (kept a day, "
                   "so a restart rejoins faster) go [default: ~/.salvage/agent].")
@click.option("--duty-cycle", type=float, default=1.0, show_default=True, metavar="F",
              help="Let work run at most this fraction of wall time (0.5: half the time), "
                   "so the PC stays cool and quiet for its owner.")
@click.option("--corrupt-results", is_flag=True, hidden=True,
              help="Tests only: this PC forges its science results (a lying host).")
def join(address, name, token, metrics_port, simulate, num_cpus, node_ip, poll_interval, log_dir, duty_cycle,
         corrupt_results):
    """Probe this PC, join the cluster at ADDRESS (the head's HOST:PORT) and stay in it.

    Runs in the foreground; Ctrl-C or SIGTERM leaves the cluster cleanly.
    """
    from jobs.dutycycle import DutyCycle
    from workers.agent import Agent, AgentConfig, JoinError
    from workers.simnvml import SpecError, check_spec

    if simulate is not None:
        try:
            check_spec(simulate)
        except SpecError as err:
            raise click.ClickException(str(err)) from None
    if num_cpus is not None and num_cpus < 1:
        raise click.ClickException(f"num-cpus: expected at least 1, got {num_cpus}")
    try:
        DutyCycle(duty_cycle)  # the limit the agent's jobs will run under
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    if ":" not in address:
        address = f"{address}:{DEFAULT_HTTP_PORT}"
    config = AgentConfig(address=address, name=name or socket.gethostname().split(".")[0], token=token,
                         metrics_port=metrics_port, simulate_gpus=simulate, poll_interval=poll_interval,
                         num_cpus=num_cpus, node_ip=node_ip, duty_cycle=duty_cycle)
    if log_dir:
        config.log_dir = log_dir
    if corrupt_results:
        from workers.agent import CORRUPT_RESULTS_ENV

        config.ray_env[CORRUPT_RESULTS_ENV] = "1"
    try:
        agent = Agent(config, say=lambda m: click.echo(m))
        sys.exit(agent.run())
    except JoinError as err:
        raise click.ClickException(str(err)) from None


from .sciencecli import science  # noqa: E402
from .traincli import train  # noqa: E402

main.add_command(train)
main.add_command(science)


@main.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path.home() / ".salvage-demo",
              show_default=True, help="State dir of the demo cluster (kept apart from a real one).")
@click.option("--keep", is_flag=True, help="Leave the demo cluster running until Ctrl-C.")
@click.option("--iters", type=int, default=300, show_default=True, help="Training iterations of the demo job.")
@click.option("--seeds", type=int, default=16, show_default=True, help="Protein-folding work units.")
def demo(state_dir, keep, iters, seeds):
    """Run the whole system on this machine: a loopback cluster with two
    simulated-GPU PCs, a small GPT training job and a batch of science work
    units on it, then a clean stop."""
    from .demo import run_demo

    run_demo(state_dir, keep, iters, seeds)


if __name__ == "__main__":
    main()
