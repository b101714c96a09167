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
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def free_ports(count: int, host: str = "127.0.0.2") -> list[int]:
    """`count` distinct free ports: the sockets stay open until all are picked,
    so the kernel cannot hand the same port out twice."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
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


def node_ports_args(ip: str) -> list[str]:
    """Explicit free ports for each node's services, so several nodes (or
    clusters) can start at once on one machine: some defaults are fixed
    numbers, and Ray's own pick races when nodes start together."""
    flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    return [str(x) for pair in zip(flags, free_ports(len(flags), ip)) for x in pair]


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
