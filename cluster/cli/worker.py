"""`salvage worker ...`: run the agent on a PC so it joins a cluster."""
from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import click

from cluster.head.state import DEFAULT_HTTP_PORT, MIN_TOKEN_CHARS, StateError, read_token_file
from jobs.dutycycle import DutyCycle


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
@click.option("--poll-interval", type=float, default=5.0, show_default=True, help="Seconds between hardware polls.")
@click.option("--log-dir", type=click.Path(path_type=Path), default=None,
              help="Where the agent's Ray node logs and its last speed measurement (kept a day, "
                   "so a restart rejoins faster) go [default: ~/.salvage/agent].")
@click.option("--duty-cycle", type=float, default=1.0, show_default=True, metavar="F",
              help="Let work run at most this fraction of wall time (0.5: half the time), "
                   "so the PC stays cool and quiet for its owner.")
@click.option("--corrupt-results", is_flag=True, hidden=True,
              help="Tests only: this PC forges its science results (a lying host).")
@click.option("--corrupt-deltas", default=None, hidden=True,
              help="Tests only: this PC's pool workers send broken deltas of this kind.")
def join(address, name, token_file, ca_fingerprint, metrics_port, simulate, num_cpus, node_ip, poll_interval, log_dir, duty_cycle,
         corrupt_results, corrupt_deltas):
    """Probe this PC, join the cluster at ADDRESS (the head's HOST:PORT) and stay in it.

    Runs in the foreground; Ctrl-C or SIGTERM leaves the cluster cleanly.
    """
    from workers.agent import Agent, AgentConfig, JoinError
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
    if ca_fingerprint is not None and not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", ca_fingerprint):
        raise click.ClickException("ca-fingerprint: expected sha256: and 64 hex digits, as the join line shows")
    config = AgentConfig(address=address, name=name or socket.gethostname().split(".")[0], token=token,
                         ca_fingerprint=ca_fingerprint,
                         metrics_port=metrics_port, simulate_gpus=simulate, poll_interval=poll_interval,
                         num_cpus=num_cpus, node_ip=node_ip, duty_cycle=duty_cycle)
    if log_dir:
        config.log_dir = log_dir
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
