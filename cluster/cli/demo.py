"""`salvage demo`: the whole system on this one machine.

A loopback cluster (head + two agents with simulated GPUs), then a small
training job and a batch of protein folds on it, then a clean stop. Every
step is the same command a user would type.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from workers.raynode import free_ports

SALVAGE = [sys.executable, "-P", "-m", "cluster.cli"]  # -P: never the caller's directory on the path

DEMO_PCS = {"pc-gtx1060": "GTX 1060:3GB:6.1", "pc-rtx3060": "RTX 3060:12GB:8.6"}


class Demo:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.agents: list[subprocess.Popen] = []
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        self.env.setdefault("SALVAGE_RAY_OBJECT_STORE_BYTES", str(200 * 2**20))

    def salvage(self, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
        cmd = [*SALVAGE, *args]
        click.secho(f"$ salvage {' '.join(args)}", fg="cyan")
        proc = subprocess.run(cmd, env=self.env, text=True, capture_output=capture)
        if proc.returncode != 0:
            raise click.ClickException(f"`salvage {' '.join(args)}` failed"
                                       + (f": {proc.stderr.strip()}" if capture else ""))
        return proc

    def status(self) -> dict:
        out = subprocess.run([*SALVAGE, "cluster", "status", "--state-dir",
                              str(self.state_dir), "--json"], env=self.env, text=True, capture_output=True)
        return json.loads(out.stdout) if out.returncode == 0 else {"nodes": []}

    def up(self) -> str:
        ray_port, http_port = free_ports(2)
        self.salvage("cluster", "up", "--state-dir", str(self.state_dir), "--port", str(ray_port),
                     "--http-port", str(http_port))
        return f"127.0.0.2:{http_port}"

    def join_pcs(self, address: str) -> None:
        logs = self.state_dir / "logs"
        for name, spec in DEMO_PCS.items():
            click.secho(f"$ salvage worker join {address} --name {name} --simulate-gpus '{spec}' &", fg="cyan")
            with open(logs / f"agent-{name}.log", "ab") as log:
                self.agents.append(subprocess.Popen(
                    [*SALVAGE, "worker", "join", address, "--name", name, "--token-file",
                     str(self.state_dir / "token"), "--simulate-gpus", spec, "--metrics-port", "0",
                     "--num-cpus", "1", "--log-dir", str(logs)],
                    stdout=log, stderr=subprocess.STDOUT, env=self.env))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            alive = {n["name"] for n in self.status()["nodes"] if n["state"] == "alive"}
            if alive >= set(DEMO_PCS):
                return
            if any(a.poll() is not None for a in self.agents):
                raise click.ClickException(f"an agent exited while joining (logs in {logs})")
            time.sleep(1)
        raise click.ClickException(f"the demo PCs did not join within 120 s (logs in {logs})")

    def stop(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
        for agent in self.agents:
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
        subprocess.run([*SALVAGE, "cluster", "down", "--state-dir",
                        str(self.state_dir)], env=self.env)


    def last_line(self, *args: str) -> str:
        return self.salvage(*args, capture=True).stdout.strip().splitlines()[-1]

    def work(self, iters: int, seeds: int) -> None:
        sd = ["--state-dir", str(self.state_dir)]
        job = self.last_line("train", "submit", *sd, "--preset", "shakespeare-char-cpu",
                             "--set", f"max_iters={iters}", "--set", f"lr_decay_iters={iters}",
                             "--set", "eval_interval=100")
        batch = self.last_line("science", "submit", "hp-fold", *sd, "--sequence", "HPHPPHHPHPPHPHHPPHPH",
                               "--seeds", str(seeds), "--quorum", "1")
        self.salvage("cluster", "status", *sd)
        self.salvage("train", "logs", *sd, job, "-f")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            out = subprocess.run([*SALVAGE, "science", "status", batch, "--json", *sd],
                                 env=self.env, text=True, capture_output=True)
            if out.returncode == 0 and json.loads(out.stdout)["done"]:
                break
            time.sleep(2)
        self.salvage("science", "status", *sd, batch)
        results = [json.loads(line) for line in self.salvage("science", "results", *sd, batch,
                                                             capture=True).stdout.splitlines()]
        best = min(results, key=lambda r: r["result"]["energy"]) if results else None
        if best:
            click.echo(f"best fold of {len(results)} seeds: energy {best['result']['energy']} "
                       f"(best known for this sequence: -9)")
        self.salvage("train", "sample", *sd, job, "--tokens", "200")


def run_demo(state_dir: Path, keep: bool, iters: int = 300, seeds: int = 16) -> None:
    demo = Demo(state_dir)
    try:
        address = demo.up()
        demo.join_pcs(address)
        demo.salvage("cluster", "status", "--state-dir", str(state_dir))
        demo.work(iters, seeds)
        if keep:
            click.echo(f"The cluster keeps running. Try `salvage cluster status --state-dir {state_dir}`; "
                       f"stop it with Ctrl-C.")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        demo.stop()


@click.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path.home() / ".salvage-demo",
              show_default=True, help="State dir of the demo cluster (kept apart from a real one).")
@click.option("--keep", is_flag=True, help="Leave the demo cluster running until Ctrl-C.")
@click.option("--iters", type=int, default=300, show_default=True, help="Training iterations of the demo job.")
@click.option("--seeds", type=int, default=16, show_default=True, help="Protein-folding work units.")
def demo(state_dir, keep, iters, seeds):
    """Run the whole system on this machine: a loopback cluster with two
    simulated-GPU PCs, a small GPT training job and a batch of science work
    units on it, then a clean stop."""
    run_demo(state_dir, keep, iters, seeds)
