"""One Ray node (`ray start --block`) owned by this process.

`--block` keeps the node a child of ours: stopping it (SIGTERM) stops exactly
this node's raylet and nothing else on the PC, unlike `ray stop`, which would
kill every Ray process here, including other local nodes. On Linux the child
is also told to die with us, so a killed agent never leaves an orphan node.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn for children that must not outlive us (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the node may outlive a killed parent, as with `ray start`


@contextlib.contextmanager
def start_lock():
    """Serialise Ray node start-ups on this machine: `ray start` names its
    socket files by counting the ones that exist, so two nodes starting at
    once pick the same name and one fails."""
    path = Path(tempfile.gettempdir()) / "salvage-ray-start.lock"
    # Read-only and readable by all: the head's service user, an admin's `salvage demo`
    # and any other user's agent share Ray's /tmp/ray, so they share this lock too.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):  # only its creator may; everyone else just reads it
            os.fchmod(fd, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _group_alive(group: int) -> bool:
    """Any live (non-zombie) process left in this process group?"""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == group and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


# Ray binds these on every head without being asked (its autoscaler's and its
# dashboard's metrics): a port picked free for another of its processes must not be one.
RAY_OWN_PORTS = frozenset({44217, 44227})


def free_ports(count: int, host: str = "127.0.0.2") -> list[int]:
    """`count` distinct free ports, none of Ray's own: the sockets stay open until
    all are picked, so the kernel cannot hand the same port out twice."""
    socks: list[socket.socket] = []
    picked: list[int] = []
    try:
        while len(picked) < count:
            s = socket.socket()
            socks.append(s)
            s.bind((host, 0))
            if s.getsockname()[1] not in RAY_OWN_PORTS:
                picked.append(s.getsockname()[1])
        return picked
    finally:
        for s in socks:
            s.close()


def port_in_use(host: str, port: int) -> bool:
    # Connect as well as bind: gRPC servers (Ray's GCS) listen with SO_REUSEPORT
    # on all addresses, so a bind alone can succeed on a port that is taken.
    with socket.socket() as s:
        s.settimeout(1.0)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# The head reads no worker output (`ray.init(log_to_driver=False)`), so a node's log
# monitor would only spend the PC's CPU tailing log files for nobody.
NO_LOG_MONITOR = ["--include-log-monitor", "false"]


@dataclass(frozen=True)
class NodePorts:
    """The ports one Ray node listens on, as `ray start` names them (`--node-manager-port`...).
    None: the role's default on a LAN address, any free port on loopback (several nodes
    share one machine there); 0: any free port."""

    node_manager: int | None = None  # other nodes ask this node's raylet for workers
    object_manager: int | None = None  # objects move between nodes
    metrics_export: int | None = None  # Prometheus on the head scrapes Ray's own metrics
    dashboard_agent_grpc: int | None = None  # the head's Ray dashboard asks the node
    dashboard_agent_listen: int | None = None  # its HTTP side, for the head's Ray dashboard
    runtime_env_agent: int | None = None  # this node's raylet only
    min_worker: int | None = None  # the range its worker processes bind in: every other node
    max_worker: int | None = None  # and the head's driver call them directly

    def resolved(self, defaults: NodePorts, loopback: bool) -> NodePorts:
        """Every None replaced: with the default on a LAN address, with 0 on loopback
        (the worker port range keeps Ray's default there too)."""
        chosen = {}
        for name, value in asdict(self).items():
            if value is None:
                value = getattr(defaults, name) if not loopback or name in WORKER_RANGE else 0
            chosen[name] = value
        return NodePorts(**chosen)

    def check(self) -> None:
        """ValueError naming the flag, one line, unless these ports make a node Ray can start
        (call on resolved ports)."""
        for name, value in asdict(self).items():
            if not 0 <= value < 65536:
                raise ValueError(f"{port_flag(name)}: expected 1-65535 (0: any free port), got {value}")
        if not 1024 <= self.min_worker < self.max_worker < 65536:
            raise ValueError(f"min-worker-port, max-worker-port: expected 1024 <= min < max <= 65535, "
                             f"got {self.min_worker}-{self.max_worker}")
        seen: dict[int, str] = {}
        for name in SERVICE_PORTS:
            value = getattr(self, name)
            if self.min_worker <= value <= self.max_worker:
                raise ValueError(f"{port_flag(name)}: {value} lies in the worker port range "
                                 f"{self.min_worker}-{self.max_worker}; pick one outside it")
            if value and value in seen:
                raise ValueError(f"{port_flag(name)}: {value} is also the {port_flag(seen[value])}")
            seen[value] = name

    def fixed(self) -> dict[str, int]:
        """Flag -> port for the service ports chosen in advance (not 0)."""
        return {port_flag(name): getattr(self, name) for name in SERVICE_PORTS if getattr(self, name)}


SERVICE_PORTS = ("node_manager", "object_manager", "metrics_export", "dashboard_agent_grpc",
                 "dashboard_agent_listen", "runtime_env_agent")
WORKER_RANGE = ("min_worker", "max_worker")
# The head's node and a PC's get different defaults, so the head's machine can run an agent
# too; the worker range is Ray's own (10002-19999), which nodes on one machine share.
HEAD_NODE_PORTS = NodePorts(6370, 6371, 6372, 6373, 6374, 6375, 10002, 19999)
PC_NODE_PORTS = NodePorts(6380, 6381, 6382, 6383, 6384, 6385, 10002, 19999)


def port_flag(name: str) -> str:
    """`node_manager` -> `node-manager-port`: the option's name in salvage and in `ray start`."""
    return name.replace("_", "-") + "-port"


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.")


def node_ports_args(ip: str, ports: NodePorts | None = None, defaults: NodePorts = PC_NODE_PORTS) -> list[str]:
    """`ray start` flags for every port of a node at `ip`: the ones given, else the
    defaults on a LAN (so a firewall can name them), else free ones on loopback,
    picked together so several nodes (or clusters) can start at once on one machine."""
    chosen = (ports or NodePorts()).resolved(defaults, is_loopback(ip))
    free = iter(free_ports(sum(1 for name in SERVICE_PORTS if not getattr(chosen, name)), ip))
    args = []
    for name, value in asdict(chosen).items():
        args += [f"--{port_flag(name)}", str(value or next(free))]
    return args


def ray_env(token: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if token:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = token
    else:
        env.pop("RAY_AUTH_MODE", None)
        env.pop("RAY_AUTH_TOKEN", None)
    env.update(extra or {})
    return env


def ray_tls_env(ca: Path, cert: Path, key: Path) -> dict[str, str]:
    """Ray's mutual TLS on every gRPC channel of a process, and of the workers it starts."""
    return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": str(cert), "RAY_TLS_SERVER_KEY": str(key),
            "RAY_TLS_CA_CERT": str(ca)}


class RayNode:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A process group of its own: if the graceful stop hangs, the whole
            # node (GCS, raylet, workers) is killed together and frees its ports.
            self.proc = subprocess.Popen(
                [ray_executable(), "start", "--block", *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, preexec_fn=die_with_parent, start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, timeout: float = 10.0) -> None:
        """Stop the node at once: every process of it, no drain. Returns when
        they are all gone, so a new node can take their ports and names."""
        if self.proc is None:
            return
        group = self.proc.pid
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.proc.wait()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(group):
            time.sleep(0.1)

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM lets Ray drain (up to 30 s); past `timeout` the group is killed."""
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
