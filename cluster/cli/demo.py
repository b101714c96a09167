"""`salvage demo`: the whole system on this one machine, in a few minutes.

A loopback cluster of three PCs with simulated hardware (a fast GPU, a slow GPU
whose owner allows half the time, a CPU-only office box) trains one small GPT
across all three as a pool job, while science fills the time training leaves
the PCs: protein folds before it, a Lennard-Jones fluid at two state points
after it. A live view shows each worker's tokens/s, the loss and the ETA, the
units turning valid and each PC's credit; then a text sample, where to look
next, and a clean stop. Every step is a command a user could type, shown as
it runs; the view polls the head's API like any client.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live

from cluster.head.state import HeadConfig, StateDir
from workers.raynode import die_with_parent, free_ports, port_in_use

from .common import call, get
from .demo_view import Snapshot, round_line, view

SALVAGE = [sys.executable, "-P", "-m", "cluster.cli"]  # -P: never the caller's directory on the path
POLL_S = 1.0
JOIN_TIMEOUT_S = 180.0
AGENT_STOP_S = 45.0  # an agent's Ray node drains for up to 30 s before it is killed
KEEP_ENV = ("SALVAGE_CACHE_DIR",)  # the only SALVAGE_* setting of the user's that reaches the demo's cluster


@dataclass(frozen=True)
class DemoPC:
    name: str
    gpus: tuple[dict, ...]  # simulated GPUs, as `--simulate-gpus @FILE` reads them; none: CPU only
    duty_cycle: float
    about: str


PCS = (
    DemoPC("pc-rtx3060", ({"name": "RTX 3060", "vram": "12GB", "cc": "8.6", "gflops": 12_700.0},), 1.0, "a fast GPU"),
    DemoPC("pc-gtx1060", ({"name": "GTX 1060", "vram": "3GB", "cc": "6.1", "gflops": 4_400.0},), 0.5,
           "an older GPU whose owner lets work run half the time"),
    DemoPC("pc-office", (), 1.0, "an office PC, CPU only"),
)
DUTY = {pc.name: pc.duty_cycle for pc in PCS}

# A GPT small enough for three workers sharing two cores to learn words in a minute. The pool
# scales the learning rate by its speed over its fastest worker's (about 3 here).
TINY_GPT = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "batch_size": 8, "learning_rate": 1e-3,
            "min_lr": 1e-4, "warmup_iters": 20, "eval_iters": 10, "log_interval": 50}
SYNC_STEPS = 25  # local steps per round on the fastest worker: rounds of a few seconds, each reported
POOL_TOKENS_PER_S = 30_000  # what the pool trains on a busy 2-core machine; a slower one is stopped on time
# Units of a few seconds each: the apps' own defaults are sized for real PCs and real accuracy.
HP_FOLD = ("hp-fold", "--sequence", "HPHPPHHPHPPHPHHPPHPH", "--seeds", "12",
           "--params", json.dumps({"sweeps": 5000, "replicas": 2}))
HP_FOLD_BEST = -9  # the best energy known for that sequence
LJ_MD = ("lj-md", "--grid", "T=1.5,2.0 rho=0.05", "--seeds", "3",
         "--params", json.dumps({"n_particles": 64, "replicas": 4, "steps": 335, "equilibration_steps": 100}))
SCIENCE_FIRST_S = 90.0  # the first batch has the PCs to itself for at most this long
AFTER_TRAINING_S = 40.0  # kept after training for the sample and the second batch
MIN_TRAINING_S = 25.0
STOP_WAIT_S = 120.0  # a stopped pool job evaluates and writes its checkpoint first


def demo_env() -> dict[str, str]:
    """The environment of every command the demo runs: none of the user's SALVAGE_*
    settings (they configure a real cluster), no Ray usage report, and a small Ray
    object store on each node (four nodes share this machine's memory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALVAGE_") or k in KEEP_ENV}
    env.update(RAY_USAGE_STATS_ENABLED="0", SALVAGE_RAY_OBJECT_STORE_BYTES=str(200 * 2**20))
    return env


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt  # SIGTERM and SIGHUP stop the demo as Ctrl-C does


class Demo:
    def __init__(self, state_dir: Path, minutes: float, console: Console):
        self.state = StateDir(state_dir)
        self.sd = ["--state-dir", str(state_dir)]
        self.deadline = time.monotonic() + minutes * 60
        self.console = console
        self.env = demo_env()
        self.config: HeadConfig | None = None
        self.agents: dict[str, subprocess.Popen] = {}
        self.job: int | None = None
        self.batches: dict[int, str] = {}  # batch -> app
        self.seq = 0  # the last training log entry shown
        self.last_round: dict | None = None
        self.val_loss: float | None = None
        self.said: dict[tuple[int, str], object] = {}  # what was last printed about each batch
        self.credited: set[str] = set()  # PCs whose first credit was announced
        self.snap = Snapshot()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    # --- commands, as a user would type them ---
    def salvage(self, *args: str, show_output: bool = True) -> str:
        """Run `salvage ARGS` (shown first) and return what it printed. It runs in a
        session of its own, so Ctrl-C reaches the demo alone, which lets a started
        command finish and then stops everything in order."""
        shown = shlex.join(["salvage", *args])
        self.say(f"$ {shown}", style="cyan")
        proc = subprocess.Popen([*SALVAGE, *args], env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, err = proc.communicate()
        except KeyboardInterrupt:
            self.say(f"(letting `{shown}` finish, then stopping)")
            proc.communicate()
            raise
        if proc.returncode != 0:
            why = (err.strip() or out.strip() or f"exit status {proc.returncode}").splitlines()[-1]
            raise click.ClickException(f"`{shown}` failed: {why}")
        if show_output and out.strip():
            self.say(out.rstrip())
        return out

    def last_line(self, *args: str) -> str:
        return self.salvage(*args).strip().splitlines()[-1]

    # --- the cluster ---
    def corpus(self) -> str:
        """The text to train on: Tiny Shakespeare if it can be downloaded, else
        Python's own documentation text; says which."""
        from jobs.gpt.data import SHAKESPEARE_FILE, default_cache_dir, load_corpus

        cache = default_cache_dir()
        corpus = load_corpus(None, cache, timeout_s=10.0)
        if corpus.note is None:
            self.say("corpus: Tiny Shakespeare (downloaded once, checksum verified)")
            return str(cache / SHAKESPEARE_FILE)
        path = self.state.path / "demo" / "python-docs.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(corpus.text)
        self.say(f"corpus: no network, so the GPT learns Python's own documentation text "
                 f"(pydoc_data.topics, {len(corpus.text) / 1e3:.0f} kB) instead of Tiny Shakespeare")
        return str(path)

    def up(self) -> None:
        if self.state.running_pid() is not None:
            raise click.ClickException(f"a cluster is already running from {self.state.path}: stop it with "
                                       f"`salvage cluster down --state-dir {self.state.path}`, or use another --state-dir")
        ray_port, http_port, prometheus_port = free_ports(3)
        args = ["cluster", "up", *self.sd, "--port", str(ray_port), "--http-port", str(http_port)]
        if shutil.which("prometheus"):
            args += ["--prometheus", "--prometheus-port", str(prometheus_port)]
        self.salvage(*args)
        self.config = self.state.read_head()

    def join(self) -> None:
        specs = self.state.path / "demo"
        specs.mkdir(parents=True, exist_ok=True)
        logs = self.state.logs
        for pc in PCS:
            spec = ""
            if pc.gpus:
                (specs / f"{pc.name}.json").write_text(json.dumps(list(pc.gpus)))
                spec = f"@{specs / f'{pc.name}.json'}"
            args = ["worker", "join", self.config.api_address, "--name", pc.name,
                    "--token-file", str(self.state.token_file), "--simulate-gpus", spec, "--num-cpus", "1",
                    "--metrics-port", "0", "--log-dir", str(logs / "agents")]
            if pc.duty_cycle < 1.0:
                args += ["--duty-cycle", f"{pc.duty_cycle:g}"]
            self.say(f"$ {shlex.join(['salvage', *args])} &    # {pc.about}", style="cyan")
            with open(logs / f"agent-{pc.name}.log", "ab") as log:
                self.agents[pc.name] = subprocess.Popen(
                    [*SALVAGE, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                    start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while time.monotonic() < deadline:
            nodes = {n["name"]: n for n in get(self.state.path, "/api/status")["nodes"]}
            if all(nodes.get(pc.name, {}).get("state") == "alive" for pc in PCS):
                return
            for name, agent in self.agents.items():
                if agent.poll() is not None:
                    raise click.ClickException(f"PC {name} stopped while joining (its log: "
                                               f"{logs / f'agent-{name}.log'})")
            time.sleep(1.0)
        raise click.ClickException(f"the demo PCs did not join within {JOIN_TIMEOUT_S:.0f} s (logs in {logs})")

    def stop(self) -> None:
        """The PCs leave, then the head stops: no process or port is left, the state
        is kept. Ctrl-C is ignored meanwhile, so a second one cannot leave half a
        cluster behind."""
        held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            running = [a for a in self.agents.values() if a.poll() is None]
            if running or self.state.running_pid() is not None:
                self.say("stopping: the PCs leave, then the head (up to a minute)")
            for agent in running:
                agent.send_signal(signal.SIGTERM)
            for agent in running:
                try:
                    agent.wait(AGENT_STOP_S)
                except subprocess.TimeoutExpired:
                    os.killpg(agent.pid, signal.SIGKILL)
                    agent.wait()
            if self.state.running_pid() is not None:
                subprocess.run([*SALVAGE, "cluster", "down", *self.sd], env=self.env, capture_output=True,
                               start_new_session=True)
            if self.config is not None:
                busy = [p for p in (self.config.ray_port, self.config.http_port) if port_in_use(self.config.host, p)]
                left = f"; ports {busy} are still in use" if busy else ""
                self.say(f"the demo cluster is stopped{left}. Its jobs, results and credit are kept in "
                         f"{self.state.path}: `salvage cluster up --state-dir {self.state.path}` brings it back.")
        finally:
            for sig, handler in held.items():
                signal.signal(sig, handler)

    # --- the work ---
    def submit_science(self, app_args: tuple[str, ...]) -> int:
        batch = int(self.last_line("science", "submit", app_args[0], *self.sd, *app_args[1:]))
        self.batches[batch] = app_args[0]
        return batch

    def submit_training(self, data: str, seconds: float) -> int:
        iters = max(200, int(seconds * POOL_TOKENS_PER_S / (TINY_GPT["batch_size"] * TINY_GPT["block_size"])))
        sets = {**TINY_GPT, "max_iters": iters, "lr_decay_iters": iters, "eval_interval": max(1, iters // 2)}
        args = ["train", "submit", *self.sd, "--data", data, "--workers", "all", "--sync-steps", str(SYNC_STEPS)]
        for key, value in sets.items():
            args += ["--set", f"{key}={value}"]
        self.job = int(self.last_line(*args))
        return self.job

    def poll(self) -> Snapshot:
        """What the head says now; the last snapshot if it does not answer in time."""
        try:
            snap = Snapshot(nodes=[n for n in get(self.state.path, "/api/status")["nodes"] if n["name"] in DUTY])
            if self.job is not None:
                snap.job = next(j for j in call(self.state.path, "/api/train/list", {})["jobs"] if j["id"] == self.job)
                for entry in call(self.state.path, "/api/train/logs", {"job": self.job, "since": self.seq})["entries"]:
                    self.seq = entry["seq"]
                    self.show_entry(entry)
            snap.credit = call(self.state.path, "/api/science/status", {})["credit_by_host"]
            snap.batches = [call(self.state.path, "/api/science/status", {"batch": b}) for b in self.batches]
        except click.ClickException as err:
            self.say(f"(the head did not answer this time: {err.message})", style="dim")
            return self.snap
        snap.last_round, snap.val_loss = self.last_round, self.val_loss
        self.show_science(snap)
        self.snap = snap
        return snap

    def show_entry(self, entry: dict) -> None:
        d = entry["data"]
        if entry["kind"] == "log":
            self.say(f"job {self.job}: {d}", style="dim")
        elif "round" in d:
            if "train_loss" in d:
                self.last_round = d
            elif d.get("val_loss") is not None:
                self.val_loss = d["val_loss"]
            self.say(round_line(d))

    def show_science(self, snap: Snapshot) -> None:
        """A line when a batch has more units valid, or waits for another reason,
        and when a PC earns its first credit."""
        for b in snap.batches:
            tag = f"batch {b['batch']} ({b['app']})"
            valid = (b["wus"]["done"], b["wus"]["total"])
            if self.said.get((b["batch"], "valid"), (0, 0)) != valid and valid[0]:
                self.say(f"{tag}: {valid[0]}/{valid[1]} units valid")
                self.said[(b["batch"], "valid")] = valid
            waiting = tuple(b.get("waiting") or ())
            if waiting and self.said.get((b["batch"], "waiting")) != waiting:
                self.say(f"{tag} waits: {'; '.join(waiting)}")
            self.said[(b["batch"], "waiting")] = waiting
        for host, credit in snap.credit.items():
            if host in DUTY and host not in self.credited:
                self.credited.add(host)
                self.say(f"{host} earned its first credit ({credit:.3g} cobblestones)")

    def watch(self, live: Live, phase: str, until, limit_s: float) -> Snapshot:
        """Poll and redraw until `until(snapshot)` holds or `limit_s` passed."""
        end = time.monotonic() + limit_s
        while True:
            snap = self.poll()
            live.update(view(snap, DUTY, phase, self.left()), refresh=True)
            if until(snap) or time.monotonic() >= end:
                return snap
            time.sleep(POLL_S)

    def batch_done(self, snap: Snapshot, batch: int) -> bool:
        return any(b["batch"] == batch and b["done"] for b in snap.batches)

    def run(self) -> None:
        data = self.corpus()
        self.up()
        self.join()
        self.salvage("cluster", "status", *self.sd)
        self.where("open these while it runs")
        with Live(console=self.console, auto_refresh=False) as live:
            self.say("science first: the PCs are free, so protein folds run on all three (quorum 2: each fold "
                     "is computed on two PCs and must agree before it is valid and credited)", style="bold")
            fold = self.submit_science(HP_FOLD)
            self.watch(live, "science on free PCs", lambda s: self.batch_done(s, fold),
                       min(SCIENCE_FIRST_S, max(20.0, self.left() / 3)))
            seconds = max(MIN_TRAINING_S, self.left() - AFTER_TRAINING_S)
            self.say(f"training: one GPT across all three PCs, about {seconds:.0f} s; science waits while "
                     "they train", style="bold")
            job = self.submit_training(data, seconds)
            self.submit_science(LJ_MD)
            final = ("done", "failed", "stopped")
            snap = self.watch(live, "training across the pool", lambda s: s.job and s.job["state"] in final, seconds)
            if snap.job is None or snap.job["state"] not in final:
                self.salvage("train", "stop", *self.sd, str(job))
                snap = self.watch(live, "training stops on time: checkpointing", lambda s: s.job["state"] in final,
                                  STOP_WAIT_S)
            self.sample(snap)
            self.say("science again, in the time training left", style="bold")
            snap = self.watch(live, "science after training", lambda s: all(b["done"] for b in s.batches),
                              max(AFTER_TRAINING_S, self.left()))
        self.console.print()  # after the view's last frame
        self.summary(snap, fold)

    def sample(self, snap: Snapshot) -> None:
        job = snap.job or {}
        if job.get("state") == "failed":
            self.say(f"training job {self.job} failed: {job.get('error')}", style="red")
            return
        try:
            out = self.salvage("train", "sample", *self.sd, str(self.job), "--tokens", "240", show_output=False)
        except click.ClickException as err:  # no checkpoint yet: the science and the summary still follow
            self.say(f"no sample: {err.message}", style="red")
            return
        loss = f", val loss {self.val_loss:.3f}" if self.val_loss is not None else ""
        self.say(f"--- sample from job {self.job} ({job.get('iter') or 0:,} iterations{loss}) ---", style="bold")
        self.say(out.strip("\n"))
        self.say("--- end of sample ---", style="bold")

    def summary(self, snap: Snapshot, fold: int) -> None:
        self.salvage("science", "status", *self.sd)
        folds = call(self.state.path, "/api/science/export", {"batch": fold})["text"].splitlines()
        energies = [json.loads(line)["result"]["energy"] for line in folds]
        if energies:
            self.say(f"best fold of {len(energies)}: energy {min(energies)} (best known for this sequence: "
                     f"{HP_FOLD_BEST})")
        earned = [pc for pc in DUTY if snap.credit.get(pc)]
        self.say(f"{len(earned)} of {len(DUTY)} PCs earned credit"
                 + (f" (none yet: {', '.join(sorted(set(DUTY) - set(earned)))})" if len(earned) < len(DUTY) else ""))
        sd = f"--state-dir {self.state.path}"
        go_on = [f"salvage train submit {sd} --workers all      # train longer, on every PC",
                 f"salvage science submit lj-md {sd} --grid 'T=0.85,0.9 rho=0.776'",
                 f"salvage science status {sd}                   # units by state, why they wait, credit",
                 "salvage cluster up --host LAN_IP on a head, `salvage worker join` on a real PC (README: Adding real PCs)",
                 "dashboards: dashboards/json/*.json, or deploy/compose.yml for Prometheus + Grafana",
                 "salvage demo --keep                                  # keep the demo cluster running to explore it"]
        self.say("go on:\n  " + "\n  ".join(go_on))

    def where(self, when: str) -> None:
        """Where the head's pages listen (this run's ports)."""
        c = self.config
        where = [f"status page   http://{c.api_address}/  (hosts, training curves, the science queue)",
                 f"metrics       http://{c.api_address}/metrics",
                 f"Ray dashboard http://{c.host}:{c.dashboard_port}"]
        if c.prometheus_port:
            where.append(f"Prometheus    http://{c.prometheus_host}:{c.prometheus_port}  "
                         f"(Grafana provisioning in {self.state.path / 'grafana'})")
        self.say(f"where to look ({when}):\n  " + "\n  ".join(where), style="bold")


def run_demo(state_dir: Path, keep: bool, minutes: float) -> None:
    console = Console()
    demo = Demo(state_dir, minutes, console)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        demo.run()
        if keep:
            demo.where("the demo cluster keeps running: try the commands above; Ctrl-C stops it")
            while True:
                signal.pause()
    except KeyboardInterrupt:
        demo.say("interrupted: stopping cleanly", style="bold")
        raise SystemExit(130) from None
    finally:
        demo.stop()


@click.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path.home() / ".salvage-demo",
              show_default=True, help="State dir of the demo cluster (kept apart from a real one, and kept "
                                      "after the demo: `salvage cluster up --state-dir` brings it back).")
@click.option("--minutes", type=click.FloatRange(min=0.5), default=3.0, show_default=True,
              help="About how long the demo runs, start-up included; training and science are sized to fit.")
@click.option("--keep", is_flag=True, help="Leave the demo cluster running at the end, until Ctrl-C.")
def demo(state_dir, minutes, keep):
    """Run the whole system on this machine: a loopback cluster of three PCs
    with simulated GPUs (one CPU-only, one on a 50% duty cycle) trains one GPT
    across all three with a live view, runs science work units in the time
    training leaves and credits every PC, prints a text sample and where to
    look, and stops cleanly (Ctrl-C too)."""
    run_demo(state_dir.expanduser().resolve(), keep, minutes)
