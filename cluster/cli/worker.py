"""`salvage worker ...`: run the agent on a PC so it joins a cluster."""
from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import click

from cluster.head.state import DEFAULT_HTTP_PORT, MIN_TOKEN_CHARS, StateError, read_token_file
from jobs.dutycycle import DutyCycle
from workers.headclient import HeadError, HeadUnreachable

from .common import call, head_client, state_dir_option, state_of


@click.group()
def worker():
    """Run the agent on a PC so it joins a cluster."""


@worker.command()
@click.argument("address")
@click.option("--name", default=None, help="This PC's name in the cluster [default: its hostname].")
@click.option("--token-file", type=click.Path(path_type=Path), envvar="SALVAGE_TOKEN_FILE", default=None,
              help="A file (mode 600) holding the cluster's token: a copy of the head's STATE_DIR/token, "
                   "or - to read it from standard input. The token can also come in $SALVAGE_TOKEN; "
                   "it is never given on the command line. [env: SALVAGE_TOKEN_FILE]")
@click.option("--ca-fingerprint", envvar="SALVAGE_CA_FINGERPRINT", default=None, metavar="sha256:HEX",
              help="For a head on the LAN: its CA's fingerprint, from its join line; the agent then "
                   "talks to it over TLS it has checked. [env: SALVAGE_CA_FINGERPRINT]")
@click.option("--metrics-port", type=int, default=9470, show_default=True,
              help="Port for this PC's /metrics (0 picks a free one).")
@click.option("--simulate-gpus", "simulate", default=None, metavar="SPEC",
              help="Stand in for NVML: 'GTX 1060:3GB:6.1,RTX 3060:12GB:8.6', '' for CPU-only, "
                   "or @file.json (re-read at every poll; may hold live sensor values).")
@click.option("--num-cpus", type=int, default=None, help="CPU cores to offer [default: all].")
@click.option("--node-ip", default=None, help="This PC's address as the head sees it [default: detected].")
@click.option("--poll-interval", type=float, default=2.0, show_default=True, help="Seconds between hardware polls.")
@click.option("--log-dir", type=click.Path(path_type=Path), default=None,
              help="Where the agent's Ray node logs and its last speed measurement (kept a day, "
                   "so a restart rejoins faster) go [default: ~/.salvage/agent].")
@click.option("--duty-cycle", type=float, default=1.0, show_default=True, metavar="F",
              help="Let work run at most this fraction of wall time (0.5: half the time), "
                   "so the PC stays cool and quiet for its owner.")
@click.option("--policy", "policy_file", type=click.Path(path_type=Path), envvar="SALVAGE_POLICY", default=None,
              help="The owner's policy (TOML): idle-only, time windows, GPU temperature ceiling, power cap, "
                   "duty cycle, RAM share; re-read when it changes. See `salvage worker policy --help`. "
                   "[env: SALVAGE_POLICY]")
@click.option("--boinc", "boinc", is_flag=True, envvar="SALVAGE_BOINC",
              help="Manage this PC's BOINC client: it gets every device salvage leaves idle, and gives a "
                   "device back within seconds when salvage's work arrives. [env: SALVAGE_BOINC]")
@click.option("--boinc-rpc", default="127.0.0.1:31416", show_default=True, metavar="HOST:PORT",
              envvar="SALVAGE_BOINC_RPC", help="The BOINC client's GUI RPC. [env: SALVAGE_BOINC_RPC]")
@click.option("--boinc-password-file", type=click.Path(path_type=Path), envvar="SALVAGE_BOINC_PASSWORD_FILE",
              default=None, help="Its GUI RPC password [default: the client's gui_rpc_auth.cfg, e.g. "
                                 "/var/lib/boinc-client/gui_rpc_auth.cfg]. [env: SALVAGE_BOINC_PASSWORD_FILE]")
@click.option("--boinc-idle", type=float, default=60.0, show_default=True, metavar="SECONDS",
              envvar="SALVAGE_BOINC_IDLE",
              help="How long a device stays idle before BOINC gets it back. [env: SALVAGE_BOINC_IDLE]")
@click.option("--corrupt-results", is_flag=True, hidden=True,
              help="Tests only: this PC forges its science results (a lying host).")
@click.option("--corrupt-deltas", default=None, hidden=True,
              help="Tests only: this PC's pool workers send broken deltas of this kind.")
def join(address, name, token_file, ca_fingerprint, metrics_port, simulate, num_cpus, node_ip, poll_interval, log_dir,
         duty_cycle, policy_file, boinc, boinc_rpc, boinc_password_file, boinc_idle, corrupt_results, corrupt_deltas):
    """Probe this PC, join the cluster at ADDRESS (the head's HOST:PORT) and stay in it.

    Runs in the foreground; Ctrl-C or SIGTERM leaves the cluster cleanly.
    """
    from workers.agent import Agent, AgentConfig, JoinError
    from workers.policy import Policy, PolicyError
    from workers.simnvml import SpecError, check_spec
    from workers.tasks.faults import CORRUPT_DELTAS_ENV, CORRUPT_RESULTS_ENV, DELTA_FAULTS

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
    token = _token(token_file)
    try:
        policy = Policy.load(policy_file) if policy_file else Policy()
    except PolicyError as err:
        raise click.ClickException(str(err)) from None
    if ca_fingerprint is not None and not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", ca_fingerprint):
        raise click.ClickException("ca-fingerprint: expected sha256: and 64 hex digits, as the join line shows")
    config = AgentConfig(address=address, name=name or socket.gethostname().split(".")[0], token=token,
                         ca_fingerprint=ca_fingerprint, policy=policy, policy_file=policy_file,
                         metrics_port=metrics_port, simulate_gpus=simulate, poll_interval=poll_interval,
                         num_cpus=num_cpus, node_ip=node_ip, duty_cycle=duty_cycle)
    if log_dir:
        config.log_dir = log_dir
    if boinc:
        config.boinc = _boinc_link(boinc_rpc, boinc_password_file, boinc_idle)
    if corrupt_results:
        config.ray_env[CORRUPT_RESULTS_ENV] = "1"
    if corrupt_deltas:
        if corrupt_deltas not in DELTA_FAULTS:
            raise click.ClickException(f"corrupt-deltas: expected one of {', '.join(DELTA_FAULTS)}")
        config.ray_env[CORRUPT_DELTAS_ENV] = corrupt_deltas
    try:
        agent = Agent(config, say=lambda m: click.echo(m))
        sys.exit(agent.run())
    except JoinError as err:
        raise click.ClickException(str(err)) from None


def _boinc_link(rpc: str, password_file: Path | None, idle_s: float):
    from workers.agent import BoincLink

    host, _, port = rpc.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.ClickException(f"boinc-rpc: expected HOST:PORT of the BOINC client, got {rpc!r}")
    if not idle_s >= 0:
        raise click.ClickException(f"boinc-idle: expected seconds (0 or more), got {idle_s:g}")
    if password_file is not None and not password_file.expanduser().is_file():
        raise click.ClickException(f"boinc-password-file: no file at {password_file}")
    return BoincLink(host=host, port=int(port), password_file=password_file and password_file.expanduser(), idle_s=idle_s)


def _token(token_file: Path | None) -> str:
    """The cluster's token from the file (or stdin), else $SALVAGE_TOKEN; a one-line error if none."""
    if token_file is not None and str(token_file) == "-":
        token = sys.stdin.readline().strip()
    elif token_file is not None:
        try:
            return read_token_file(token_file.expanduser())
        except StateError as err:
            raise click.ClickException(str(err)) from None
    else:
        token = os.environ.get("SALVAGE_TOKEN", "").strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise click.ClickException("token: expected the cluster's token in --token-file (or $SALVAGE_TOKEN); "
                                   "copy it from the head's STATE_DIR/token")
    return token


def _admin(state_dir, host: str, action: str, gpu: int | None, reason: str) -> None:
    reply = call(state_dir, "/api/hosts/admin", {"name": host, "action": action, "gpu": gpu, "reason": reason})
    target = host if gpu is None else f"{host} GPU {gpu}"
    done = {"pause": "paused: its work steps aside now", "drain": "drained: its work finishes, no new work",
            "resume": "resumed: it takes work again"}[action]
    click.echo(f"{target} {done}")
    if action != "resume" and reply.get("admin"):
        click.echo("(resume it with `salvage worker resume " + host + ("" if gpu is None else f" --gpu {gpu}") + "`)")


def _admin_command(action: str, doc: str):
    @worker.command(name=action, help=doc)
    @state_dir_option
    @click.argument("host")
    @click.option("--gpu", type=int, default=None, help="Only this GPU of the PC.")
    @click.option("--reason", default="", help="Why (shown in `cluster status`, the page and the job logs).")
    def command(state_dir, host, gpu, reason):
        _admin(state_dir, host, action, gpu, reason)

    return command


pause = _admin_command("pause", "Pause a PC (or one GPU): its work checkpoints and steps aside now, "
                                "and it takes none until resumed.")
drain = _admin_command("drain", "Drain a PC (or one GPU), as Slurm does: its work finishes or hands back "
                                "(a pool worker at its round's end) and it takes no new work until resumed.")
resume = _admin_command("resume", "Undo `pause` or `drain`: the PC (or GPU) takes work again.")


@worker.command(name="list")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
def list_workers(state_dir, as_json):
    """Every PC with its state and why it takes no work, if it does not."""
    from rich.console import Console
    from rich.table import Table

    client, _ = head_client(state_of(state_dir))
    try:
        nodes = client.get("/api/status")["nodes"]
    except (HeadError, HeadUnreachable) as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(nodes, indent=2))
        return
    table = Table(title="workers")
    for col in ("host", "state", "takes work?", "running", "last event"):
        table.add_column(col)
    for n in nodes:
        event = n.get("last_event") or {}
        table.add_row(n["name"], n["state"], n.get("blocked") or ("yes" if n["state"] == "alive" else "-"),
                      ", ".join(n["running"]) or "-",
                      f"{event.get('kind', '')}: {event.get('detail', '')}" if event else "-")
    Console().print(table)


@worker.command()
@state_dir_option
@click.argument("host")
def forget(state_dir, host):
    """Free the name of a PC that is gone for good, so another PC may take it
    (a name stays with the PC holding its secret otherwise)."""
    call(state_dir, "/api/hosts/forget", {"name": host})
    click.echo(f"{host} forgotten: another PC may join under that name")


@worker.group()
def policy():
    """The owner's policy: when this PC works for the cluster.

    \b
    A TOML file given to `worker join --policy FILE`, re-read when it changes:
      [idle]    minutes = 10, max_other_cpu = 0.25
      [windows] weekdays = ["19:00-07:00"], weekend = "all"   (or mon..sun)
      [gpu]     pause_above_c = 83, resume_below_c = 75, power_cap_w = 150
      [limits]  duty_cycle = 0.5, max_ram_share = 0.6
    """


@policy.command()
@click.option("--name", default=None, help="The agent's name on this PC [default: its hostname].")
@click.option("--log-dir", type=click.Path(path_type=Path), default=None,
              help="The agent's --log-dir [default: ~/.salvage/agent].")
@click.option("--policy", "policy_file", type=click.Path(path_type=Path), default=None,
              help="Check this file instead (or when no agent runs).")
def show(name, log_dir, policy_file):
    """The policy in force on this PC and why it is running or paused right now."""
    from workers.policy import Policy, PolicyError

    if policy_file is not None:
        try:
            rules = Policy.load(policy_file).describe()
        except PolicyError as err:
            raise click.ClickException(str(err)) from None
        click.echo(f"policy in {policy_file}:")
        for line in rules:
            click.echo(f"  {line}")
        return
    name = name or socket.gethostname().split(".")[0]
    report = (log_dir or Path.home() / ".salvage" / "agent") / f"{name}.policy.json"
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        raise click.ClickException(f"no agent named {name} reports here ({report}); is `salvage worker join` "
                                   "running, with this --name and --log-dir?") from None
    age = time.time() - data["at"]
    click.echo(f"policy in force ({data['file'] or 'no policy file: the defaults'}), as of {age:.0f} s ago:")
    for line in data["policy"]:
        click.echo(f"  {line}")
    paused = data["paused"]
    click.echo("now: " + ("running" if data["running"] else f"paused ({paused['host']})"))
    for line in paused["detail"]:
        click.echo(f"  {line}")
