"""What every command group shares: the `--state-dir` option and a client for
the running head of that state dir."""
from __future__ import annotations

from pathlib import Path

import click

from cluster.head.state import HeadConfig, StateDir, default_state_dir
from workers.headclient import HeadClient, HeadError, HeadUnreachable

state_dir_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), default=None,
    help="Where the cluster keeps its database, logs and token "
         "[default: $SALVAGE_STATE_DIR or ~/.salvage].")


def state_of(path: Path | None) -> StateDir:
    return StateDir(path or default_state_dir())


def head_client(state: StateDir, timeout: float = 10.0) -> tuple[HeadClient, HeadConfig]:
    """A client for the running cluster of this state dir, or a one-line error."""
    config = state.read_head()
    if config is None or state.running_pid() is None:
        raise click.ClickException(f"no cluster is running from {state.path} (start one with `salvage cluster up`)")
    token = state.token() if config.auth else None
    return HeadClient(config.host, config.http_port, token, timeout=timeout), config


def call(state_dir: Path | None, path: str, body: dict) -> dict:
    """POST to the head of this state dir; a refusal is a one-line error."""
    client, _ = head_client(state_of(state_dir))
    try:
        return client.post(path, body)
    except (HeadError, HeadUnreachable) as err:
        raise click.ClickException(str(err)) from None
