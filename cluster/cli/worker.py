"""`salvage worker ...`: run the agent on a PC so it joins a cluster."""
from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import click

from cluster.head.state import DEFAULT_HTTP_PORT
from jobs.dutycycle import DutyCycle
from workers.raynode import PC_NODE_PORTS

from .common import (
    call,
    check_fingerprint,
    env_name,
    env_option,
    get,
    head_options,
    node_port_options,
    read_token,
    state_dir_option,
)


@click.group()
def worker():
    """Run the agent on a PC so it joins a cluster."""


@worker.command()
@click.argument("address", envvar=env_name("--head"))
@env_option("--name", default=None, help="This PC's name in the cluster [default: its hostname].")
@env_option("--token-file", type=click.Path(path_type=Path), default=None,
            help="A file (mode 600) holding the cluster's token: a copy of the head's STATE_DIR/token, "
                 "or - to read it from standard input. The token can also come in $SALVAGE_TOKEN; "
                 "it is never given on the command line.")
@env_option("--ca-fingerprint", default=None, metavar="sha256:HEX",
            help="For a head on the LAN: its CA's fingerprint, from its join line; the agent then "
                 "talks to it over TLS it has checked.")
@env_option("--metrics-port", type=int, default=9470, show_default=True,
            help="Port for this PC's /metrics (0 picks a free one).")
@node_port_options(PC_NODE_PORTS, "this PC")
@env_option("--simulate-gpus", "simulate", default=None, metavar="SPEC",
            help="Stand in for NVML: 'GTX 1060:3GB:6.1,RTX 3060:12GB:8.6', '' for CPU-only, "
                 "or @file.json (re-read at every poll; may hold live sensor values).")
@env_option("--num-cpus", type=int, default=None, help="CPU cores to offer [default: all].")
@env_option("--node-ip", default=None, help="This PC's address as the head sees it [default: detected].")
@env_option("--poll-interval", type=float, default=2.0, show_default=True, help="Seconds between hardware polls.")
@env_option("--log-dir", type=click.Path(path_type=Path), default=None,
            help="Where the agent's Ray node logs and its last speed measurement (kept a day, "
                 "so a restart rejoins faster) go [default: ~/.salvage/agent].")
@env_option("--duty-cycle", type=float, default=1.0, show_default=True, metavar="F",
            help="Let work run at most this fraction of wall time (0.5: half the time), "
                 "so the PC stays cool and quiet for its owner.")
@env_option("--policy", "policy_file", type=click.Path(path_type=Path), default=None,
            help="The owner's policy (TOML): idle-only, time windows, GPU temperature ceiling, power cap, "
                 "duty cycle, RAM share; re-read when it changes. See `salvage worker policy --help`.")
@env_option("--boinc", "boinc", is_flag=True,
            help="Manage this PC's BOINC client: it gets every device salvage leaves idle, and gives a "
                 "device back within seconds when salvage's work arrives.")
@env_option("--boinc-rpc", default="127.0.0.1:31416", show_default=True, metavar="HOST:PORT",
            help="The BOINC client's GUI RPC.")
@env_option("--boinc-password-file", type=click.Path(path_type=Path), default=None,
            help="Its GUI RPC password [default: the client's gui_rpc_auth.cfg, e.g. "
                 "/var/lib/boinc-client/gui_rpc_auth.cfg].")
@env_option("--boinc-idle", type=float, default=60.0, show_default=True, metavar="SECONDS",
            help="How long a device stays idle before BOINC gets it back.")
@click.option("--corrupt-results", is_flag=True, hidden=True,
              help="Tests only: this PC forges its science results (a lying host).")
@click.option("--corrupt-deltas", default=None, hidden=True,
              help="Tests only: this PC's pool workers send broken deltas of this kind.")
def join(address, name, token_file, ca_fingerprint, metrics_port, ray_ports, simulate, num_cpus, node_ip,
         poll_interval, log_dir, duty_cycle, policy_file, boinc, boinc_rpc, boinc_password_file, boinc_idle,
         corrupt_results, corrupt_deltas):
    """Probe this PC, join the cluster at ADDRESS (the head's HOST:PORT) and stay in it.

    Runs in the foreground; Ctrl-C or SIGTERM leaves the cluster cleanly.
    ADDRESS and every option may also come from the environment ([env: ...]
    below; ADDRESS from SALVAGE_HEAD), as the systemd unit's env file sets them.
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
        ray_ports.resolved(PC_NODE_PORTS, loopback=False).check()
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    if ":" not in address:
        address = f"{address}:{DEFAULT_HTTP_PORT}"
    token = read_token(token_file)
    try:
        policy = Policy.load(policy_file) if policy_file else Policy()
    except PolicyError as err:
        raise click.ClickException(str(err)) from None
    check_fingerprint(ca_fingerprint)
    config = AgentConfig(address=address, name=name or socket.gethostname().split(".")[0], token=token,
                         ca_fingerprint=ca_fingerprint, policy=policy, policy_file=policy_file,
                         metrics_port=metrics_port, simulate_gpus=simulate, poll_interval=poll_interval,
                         num_cpus=num_cpus, node_ip=node_ip, duty_cycle=duty_cycle, ray_ports=ray_ports)
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
@head_options
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
def list_workers(head, as_json):
    """Every PC with its state and why it takes no work, if it does not."""
    from rich.console import Console
    from rich.table import Table

    nodes = get(head, "/api/status")["nodes"]
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
