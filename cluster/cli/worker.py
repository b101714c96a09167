"""`salvage worker ...`: run the agent on a PC so it joins a cluster."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import click

from cluster.head.state import DEFAULT_HTTP_PORT
from jobs.dutycycle import DutyCycle


@click.group()
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
    from workers.agent import Agent, AgentConfig, JoinError
    from workers.simnvml import SpecError, check_spec
    from workers.tasks.science import CORRUPT_RESULTS_ENV

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
        config.ray_env[CORRUPT_RESULTS_ENV] = "1"
    try:
        agent = Agent(config, say=lambda m: click.echo(m))
        sys.exit(agent.run())
    except JoinError as err:
        raise click.ClickException(str(err)) from None
