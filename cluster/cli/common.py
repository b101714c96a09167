"""What every command group shares: options that may also come from the
environment, the `--state-dir` option, and a client for the head a command
asks (the running head of a state dir, or one named with `--head`)."""
from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import click

from cluster.head.state import (
    DEFAULT_HTTP_PORT,
    MIN_TOKEN_CHARS,
    HeadConfig,
    StateDir,
    StateError,
    default_state_dir,
    read_token_file,
)
from workers.headclient import HeadClient, HeadError, HeadUnreachable, fetch_ca
from workers.raynode import WORKER_RANGE, NodePorts, port_flag

SUBMIT_PATIENCE_S = 120.0  # the head may wait on a busy database for up to 30 s per try
ENV_PREFIX = "SALVAGE_"


def env_name(flag: str) -> str:
    """`--http-port` -> `SALVAGE_HTTP_PORT`: the variable that sets an option."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def env_option(*decls: str, **attrs):
    """A click option that may also be set by $SALVAGE_<OPTION> (a systemd unit's
    EnvironmentFile sets options this way), shown in --help as [env: NAME]."""
    envvar = env_name(next(d for d in decls if d.startswith("--")))
    attrs["help"] = f"{attrs.get('help', '').rstrip()} [env: {envvar}]".lstrip()
    return click.option(*decls, envvar=envvar, **attrs)


state_dir_option = env_option(
    # readable=False: a state dir this user may not read gets StateDir.check_readable's advice instead
    "--state-dir", type=click.Path(path_type=Path, readable=False), default=None,
    help="Where the cluster keeps its database, logs and token [default: ~/.salvage].")


def node_port_options(defaults: NodePorts, machine: str):
    """`--node-manager-port` ... `--max-worker-port`: every port of this machine's Ray
    node, passed to the command as one NodePorts (`ray_ports`)."""
    what = {"node_manager": "Ray's node manager", "object_manager": "Ray's object manager",
            "metrics_export": "Ray's metrics for Prometheus", "dashboard_agent_grpc": "Ray's dashboard agent (gRPC)",
            "dashboard_agent_listen": "Ray's dashboard agent (HTTP)",
            "runtime_env_agent": "Ray's runtime env agent (this machine only)",
            "min_worker": "Lowest port of Ray's worker processes", "max_worker": "Highest port of Ray's worker processes"}

    def decorate(command):
        @functools.wraps(command)
        def with_ports(*args, **kwargs):
            kwargs["ray_ports"] = NodePorts(**{name: kwargs.pop(f"{name}_port") for name in what})
            return command(*args, **kwargs)

        for name in reversed(what):
            default = getattr(defaults, name)
            shown = f"{default}" if name in WORKER_RANGE else f"{default}; on loopback any free port"
            with_ports = env_option(f"--{port_flag(name)}", f"{name}_port", type=int, default=None, metavar="PORT",
                                    help=f"{what[name]} on {machine} [default: {shown}].")(with_ports)
        return with_ports

    return decorate


def state_of(path: Path | None) -> StateDir:
    return StateDir(path or default_state_dir())


def head_client(state: StateDir, timeout: float = 10.0) -> tuple[HeadClient, HeadConfig]:
    """A client for the running cluster of this state dir, or a one-line error."""
    try:
        state.check_readable()
    except StateError as err:
        raise click.ClickException(str(err)) from None
    config = state.read_head()
    if config is None or state.running_pid() is None:
        raise click.ClickException(f"no cluster is running from {state.path} (start one with `salvage cluster up`, "
                                   "or ask another head with --head HOST:PORT)")
    try:
        token = state.token()
    except StateError as err:
        raise click.ClickException(str(err)) from None
    ca = state.tls_dir / "ca.pem" if config.lan else None
    return HeadClient(config.host, config.http_port, token, timeout=timeout, ca_file=ca), config


def read_token(token_file: Path | None) -> str:
    """The cluster's token from the file (`-`: standard input), else $SALVAGE_TOKEN; a one-line error if none."""
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


def check_fingerprint(ca_fingerprint: str | None) -> None:
    if ca_fingerprint is not None and not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", ca_fingerprint):
        raise click.ClickException("ca-fingerprint: expected sha256: and 64 hex digits, as the join line shows")


def split_address(address: str) -> tuple[str, int]:
    """HOST[:PORT] of a head's API (port 8470 unless given), or a one-line error."""
    host, _, port = address.rpartition(":") if ":" in address else (address, "", str(DEFAULT_HTTP_PORT))
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.ClickException(f"head: expected HOST:PORT of the head's API, got {address!r}")
    return host, int(port)


@dataclass(frozen=True)
class HeadTarget:
    """Which head a command asks: the running one of `state_dir`, or the one at `address`
    (with the cluster's token and, on a LAN, its CA's fingerprint)."""

    state_dir: Path | None = None
    address: str | None = None
    token_file: Path | None = None
    ca_fingerprint: str | None = None
    _clients: dict = field(default_factory=dict, compare=False, repr=False)  # `logs -f` asks every second

    def client(self, timeout: float = 10.0) -> HeadClient:
        if timeout not in self._clients:
            self._clients[timeout] = self._connect(timeout)
        return self._clients[timeout]

    def _connect(self, timeout: float) -> HeadClient:
        if self.address is None:
            return head_client(state_of(self.state_dir), timeout)[0]
        check_fingerprint(self.ca_fingerprint)
        host, port = split_address(self.address)
        token = read_token(self.token_file)
        if self.ca_fingerprint is None:
            return HeadClient(host, port, token, timeout=timeout)
        try:
            pem = fetch_ca(host, port, self.ca_fingerprint, timeout=timeout)
        except (HeadError, HeadUnreachable) as err:
            raise click.ClickException(str(err)) from None
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as ca:  # read once, as the client is made
            ca.write(pem)
            ca.flush()
            return HeadClient(host, port, token, timeout=timeout, ca_file=Path(ca.name))


def head_options(command):
    """--state-dir, or --head with --token-file and --ca-fingerprint: the head a
    read-only command asks, passed to it as one HeadTarget (`head`)."""

    @functools.wraps(command)
    def with_head(*args, state_dir, head, token_file, ca_fingerprint, **kwargs):
        return command(*args, head=HeadTarget(state_dir, head, token_file, ca_fingerprint), **kwargs)

    for option in reversed((
        state_dir_option,
        env_option("--head", "head", default=None, metavar="HOST:PORT",
                   help="Ask the head at this address (its API, port 8470 unless given) instead of the one "
                        "running from --state-dir: from any machine, with the cluster's token."),
        env_option("--token-file", type=click.Path(path_type=Path), default=None,
                   help="With --head: a file (mode 600) holding the cluster's token, a copy of the head's "
                        "STATE_DIR/token; else $SALVAGE_TOKEN."),
        env_option("--ca-fingerprint", default=None, metavar="sha256:HEX",
                   help="With --head, for a head on the LAN: its CA's fingerprint, from its join line."),
    )):
        with_head = option(with_head)
    return with_head


def _client(where: Path | None | HeadTarget, timeout: float = 10.0) -> HeadClient:
    return where.client(timeout) if isinstance(where, HeadTarget) else head_client(state_of(where), timeout)[0]


def _refusal(where: Path | None | HeadTarget, err: Exception) -> click.ClickException:
    hint = ""
    if isinstance(where, HeadTarget) and where.address and not where.ca_fingerprint \
            and isinstance(err, HeadUnreachable):
        hint = " (a head on a LAN speaks only TLS: give --ca-fingerprint from its join line)"
    return click.ClickException(f"{err}{hint}")


def call(where: Path | None | HeadTarget, path: str, body: dict) -> dict:
    """POST to the head (of a state dir, or a HeadTarget); a refusal is a one-line error."""
    try:
        return _client(where).post(path, body)
    except (HeadError, HeadUnreachable) as err:
        raise _refusal(where, err) from None


def get(where: Path | None | HeadTarget, path: str) -> dict:
    """GET from the head (of a state dir, or a HeadTarget); a refusal is a one-line error."""
    try:
        return _client(where).get(path)
    except (HeadError, HeadUnreachable) as err:
        raise _refusal(where, err) from None


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
