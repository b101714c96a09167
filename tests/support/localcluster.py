"""A real salvage cluster on loopback for tests: `salvage cluster up` and
`salvage worker join` as the user runs them, as subprocesses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from workers.headclient import HeadClient
from workers.raynode import free_ports

REPO = Path(__file__).resolve().parents[2]
SALVAGE = [sys.executable, "-m", "cluster.cli"]


def test_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", SALVAGE_RAY_OBJECT_STORE_BYTES=str(80 * 2**20), COLUMNS="200",
               PYTHONPATH=str(REPO))
    return env


def salvage(*args: str, timeout: float = 150, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SALVAGE, *args], capture_output=True, text=True, timeout=timeout,
                          env=test_env(), cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"salvage {' '.join(args)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def simulated(spec: str | None) -> list[str]:
    """`--simulate-gpus SPEC`, or nothing for None: an agent with no simulation probes
    the real NVML (none here, so a CPU-only PC that is not simulated)."""
    return [] if spec is None else ["--simulate-gpus", spec]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    """The first truthy value of `predicate()`, asked every 0.5 s; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class LocalCluster:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.ray_port, self.http_port = free_ports(2)
        self.agents: dict[str, subprocess.Popen] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.http_port}"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "token"

    def client(self, timeout: float = 30.0) -> HeadClient:
        """The head's API with the cluster's token, as the CLI on this machine uses it."""
        host, port = self.address.split(":")
        return HeadClient(host, int(port), self.token_file.read_text().strip(), timeout=timeout)

    def up(self, *extra: str) -> subprocess.CompletedProcess:
        return salvage("cluster", "up", "--state-dir", str(self.state_dir), "--port", str(self.ray_port),
                       "--http-port", str(self.http_port), *extra, timeout=240)

    def down(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)
        salvage("cluster", "down", "--state-dir", str(self.state_dir), check=False)

    def join(self, name: str, simulate: str | None = "", *extra: str) -> subprocess.Popen:
        log = open(self.state_dir / f"agent-{name}.log", "ab")
        proc = subprocess.Popen(
            [*SALVAGE, "worker", "join", self.address, "--name", name, *simulated(simulate),
             "--token-file", str(self.token_file), "--metrics-port", "0", "--num-cpus", "1",
             "--poll-interval", "1", "--log-dir", str(self.state_dir / "agents"), *extra],
            stdout=log, stderr=subprocess.STDOUT, env=test_env(), cwd=REPO, start_new_session=True)
        self.agents[name] = proc
        return proc

    def agent_log(self, name: str) -> str:
        return (self.state_dir / f"agent-{name}.log").read_text(errors="replace")

    def kill_training_worker(self, name: str) -> int:
        """SIGKILL the pool training worker process(es) on this PC (a crash, the OOM
        killer); its agent and Ray node stay. Returns how many were killed."""
        killed = 0
        for proc in psutil.Process(self.agents[name].pid).children(recursive=True):
            try:
                if "PoolWorker" in " ".join(proc.cmdline()):
                    proc.kill()
                    killed += 1
            except psutil.NoSuchProcess:
                pass
        return killed

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        proc = self.agents.pop(name)
        if proc.poll() is None:
            if sig == signal.SIGKILL:
                # A power cut: the agent, its Ray node and the node's workers at once.
                tree = psutil.Process(proc.pid).children(recursive=True)
                os.killpg(proc.pid, sig)
                for child in tree:
                    try:
                        child.kill()
                    except psutil.NoSuchProcess:
                        pass
            else:
                os.kill(proc.pid, sig)
            try:
                return proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait()
        return proc.returncode

    def status(self) -> dict:
        out = salvage("cluster", "status", "--state-dir", str(self.state_dir), "--json").stdout
        return json.loads(out)

    def node(self, name: str) -> dict | None:
        return next((n for n in self.status()["nodes"] if n["name"] == name), None)

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition"):
        return wait_for(predicate, timeout, what)

    def wait_state(self, name: str, state: str, timeout: float = 60.0) -> dict:
        def check():
            node = self.node(name)
            return node if node and node["state"] == state else None

        return self.wait_for(check, timeout, f"{name} to be {state}")
