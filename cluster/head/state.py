"""Where a cluster keeps its files, and how commands find a running one.

Every command takes `--state-dir` (default `$SALVAGE_STATE_DIR` or
`~/.salvage`), so several clusters can run side by side.
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers.raynode import NodePorts

DEFAULT_HTTP_PORT = 8470
DEFAULT_RAY_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265  # Ray's own
DEFAULT_RAY_CLIENT_PORT = 10001  # Ray's own
LOOPBACK = "127.0.0.2"  # Ray rewrites 127.0.0.1 to the routable address; this it leaves alone
MIN_TOKEN_CHARS = 32


class StateError(Exception):
    """A state dir problem; `str()` is the one-line reason."""


def default_state_dir() -> Path:
    return Path(os.environ.get("SALVAGE_STATE_DIR") or Path.home() / ".salvage")


@dataclass
class HeadConfig:
    """How `cluster up` started this head; read by every other command."""

    host: str  # the address the head listens on and agents reach
    ray_port: int
    http_port: int
    dashboard_port: int
    client_port: int
    lan: bool  # `up --host`: PCs on the LAN join; on loopback, only this machine's
    prometheus_port: int | None = None  # set by `up --prometheus`
    alertmanager_port: int | None = None  # set by `up --alertmanager`
    node_ports: NodePorts = field(default_factory=NodePorts)  # as given to `up`; see NodePorts

    def __post_init__(self):
        if isinstance(self.node_ports, dict):  # as read back from head.json
            self.node_ports = NodePorts(**self.node_ports)

    @property
    def prometheus_host(self) -> str:
        """Prometheus has no login: on a LAN head it stays on this machine's loopback."""
        return "127.0.0.1" if self.lan else self.host

    @property
    def api_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def ray_address(self) -> str:
        return f"{self.host}:{self.ray_port}"


class StateDir:
    def __init__(self, path: Path):
        self.path = Path(path).expanduser()

    @property
    def db_path(self) -> Path:
        return self.path / "salvage.db"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def head_file(self) -> Path:
        return self.path / "head.json"

    @property
    def pid_file(self) -> Path:
        return self.path / "coordinator.pid"

    @property
    def token_file(self) -> Path:
        return self.path / "token"

    @property
    def tls_dir(self) -> Path:
        return self.path / "tls"

    def create(self) -> None:
        """Make the dir (and check it is writable) before anything starts. Only its
        owner may enter it: it holds the token, the database and the hosts' records."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.logs.mkdir(exist_ok=True, mode=0o700)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise StateError(f"state-dir: cannot write to {self.path} ({err.strerror or err})") from None

    def token(self) -> str:
        """The cluster's Ray and API token, generated once and kept (mode 600).
        One that is empty, short, or readable by other users is refused: a head
        with it would let anyone in."""
        if not self.token_file.exists():
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        return read_token_file(self.token_file)

    def check_token(self) -> None:
        """Raise StateError (one line) unless the token file is fit to guard a head."""
        self.token()

    def tighten(self) -> None:
        """A state dir from before, or copied in: only its owner may read any of it.
        (After `check_token`: a token others could read is refused, not quietly hidden.)"""
        for root, _dirs, files in os.walk(self.path):
            os.chmod(root, 0o700)
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):  # never change a file outside the state dir
                    os.chmod(path, 0o600)

    def write_head(self, config: HeadConfig) -> None:
        tmp = self.head_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(config)))
        os.replace(tmp, self.head_file)

    def check_readable(self) -> None:
        """StateError (one line) if the state dir is there but this user may not read it:
        the head's, run by its service user, asked by someone else on the same machine."""
        try:
            if self.head_file.exists():
                self.head_file.read_bytes()
        except PermissionError:
            raise StateError(
                f"state-dir: {self.path} is not readable by you (it belongs to {_owner(self.path)}); run the command "
                f"as that user (sudo -u {_owner(self.path)} salvage ... --state-dir {self.path}), or ask the head "
                "over its API with --head HOST:PORT --token-file FILE (and --ca-fingerprint on a LAN)") from None

    def read_head(self) -> HeadConfig | None:
        try:
            return HeadConfig(**json.loads(self.head_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running_pid(self) -> int | None:
        """The coordinator's pid if it is alive."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        # A zombie or a reused pid is not our coordinator.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return pid
        return pid if b"cluster.head" in cmdline or b"cluster up" in cmdline.replace(b"\0", b" ") else None


def _owner(path: Path) -> str:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return "its owner"


def read_token_file(path: Path) -> str:
    """The token in `path`, or StateError naming what is wrong with the file."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as err:
        raise StateError(f"token: cannot read {path} ({err.strerror or err})") from None
    if mode & 0o077:
        raise StateError(f"token: {path} is readable by other users (mode {mode & 0o777:o}); chmod 600 it")
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise StateError(f"token: {path} must hold one word of at least {MIN_TOKEN_CHARS} ASCII characters")
    return token
