"""What every command group shares: the `--state-dir` option and a client for
the running head of that state dir."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import click

from cluster.head.state import HeadConfig, StateDir, StateError, default_state_dir
from workers.headclient import HeadClient, HeadError, HeadUnreachable

SUBMIT_PATIENCE_S = 120.0  # the head may wait on a busy database for up to 30 s per try

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
    try:
        token = state.token()
    except StateError as err:
        raise click.ClickException(str(err)) from None
    ca = state.tls_dir / "ca.pem" if config.lan else None
    return HeadClient(config.host, config.http_port, token, timeout=timeout, ca_file=ca), config


def call(state_dir: Path | None, path: str, body: dict) -> dict:
    """POST to the head of this state dir; a refusal is a one-line error."""
    client, _ = head_client(state_of(state_dir))
    try:
        return client.post(path, body)
    except (HeadError, HeadUnreachable) as err:
        raise click.ClickException(str(err)) from None


def get(state_dir: Path | None, path: str) -> dict:
    """GET from the head of this state dir; a refusal is a one-line error."""
    client, _ = head_client(state_of(state_dir))
    try:
        return client.get(path)
    except (HeadError, HeadUnreachable) as err:
        raise click.ClickException(str(err)) from None


def submit(state_dir: Path | None, path: str, body: dict, patience_s: float = SUBMIT_PATIENCE_S) -> dict:
    """POST a submission with an idempotency key, and send it again if the head did
    not answer in time: the head gives a repeat the first reply, so the job or batch
    exists once, or not at all and the command fails."""
    client, _ = head_client(state_of(state_dir), timeout=20.0)
    body = {**body, "idempotency_key": uuid.uuid4().hex}
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return client.post(path, body)
        except HeadError as err:
            raise click.ClickException(str(err)) from None
        except HeadUnreachable as err:
            if time.monotonic() > deadline:
                raise click.ClickException(f"{err} (for {patience_s:.0f} s; it may not have been taken: "
                                           "check the list before submitting again)") from None
            time.sleep(1.0)
