"""How fast a PC's work steps aside for its owner, how fast training takes a
PC back from science, and what pauses cost in work, on a live loopback cluster.

`salvage cluster up` and N simulated PCs (`worker join --num-cpus 1`, one
simulated GPU each driven through its live sensor file `@pcN.gpu.json`, and
the owner's `--policy pcN.toml` with a GPU ceiling, a time window and an
[idle] section whose input devices are temp files), with the agent's default
poll of 2 s:

- pause_latency_s: from a trigger to the training job's worker letting go of
  its device, the worst over `--reps` repetitions of each trigger: heat (the
  sensor file rewritten to 90 °C, above the 83 °C ceiling), time window (the
  policy file rewritten with today's window ending this minute), owner input
  (the atime of the policy's idle device bumped) and the operator (`salvage
  worker pause PC`, timed from before the command starts). "Let go" is the
  moment the worker's device claim (the agent's `NAME.claims/PID.gpu0`)
  disappears: the worker has stopped stepping, written its checkpoint and
  handed it to the head (the claim goes last). Each stop is also confirmed in
  the job's log ("requeued: its device was paused"). Goal ≤ 5 s.
- baseline, in the same run: from the trigger to the pause file telling that
  device to stop (what the agent's poll, tick and heartbeat cost, read with
  the tasks' own PauseWatch); the latency minus it is what the task adds.
- preempt_latency_s: from `salvage train submit` to the training worker
  holding a device on a PC whose only CPU slot long science units held (its
  claim appears), worst of `--preempts`; also the same from the moment the
  head took the job (the command's own part: `train submit` checks the corpus
  locally first), and to the first step (its first progress at the head).
  Goal ≤ 30 s.
- work_lost: after `--minutes` of random heat / window / owner-input /
  operator pauses and resumes on random PCs (at most N-1 at once) while
  science batches (hp-fold, quorum 2: a paused and resumed unit must end
  exactly as an uninterrupted copy; noop) and a training job run: science
  units lost (not done), invalidated (invalid or failed copies), credited
  twice, the store's consistency violations, and training iterations lost
  beyond the job's last checkpoint. Goal 0.
- simulation cost: a simulated GPU steps on the shared CPU, and N PCs, the
  head and this script share two cores; the seconds per training step and
  this process's oversleep of 50 ms naps are reported, and their sum as a
  share of the worst pause latency (an estimate of what real PCs would not pay).

A signal (Ctrl-C, the SIGTERM `timeout` sends, SIGHUP) stops the cluster first.
Last line: JSON.

    flock /tmp/salvage-heavy.lock nice -n 5 timeout 3600 .venv/bin/python benchmarks/policy_latency.py \\
        [--pcs 3] [--reps 5] [--preempts 3] [--minutes 10] [--seed 1]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "support"))
from localcluster import LocalCluster, salvage  # noqa: E402

from cluster.science.states import Outcome, ValidateState, WuState  # noqa: E402
from workers.policy import DAYS  # noqa: E402
from workers.tasks.pausing import PauseWatch  # noqa: E402

GOAL_PAUSE_S = 5.0
GOAL_PREEMPT_S = 30.0
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=32", "--set", "block_size=32",
        "--set", "warmup_iters=2", "--set", "eval_iters=2", "--set", "max_iters=10000000"]
TRIGGERS = ("heat", "window", "input", "operator")
IDLE_MINUTES = 0.05  # 3 s without owner input and the PC is idle again
LONG_AGO_S = 3600.0
WATCH_STEP_S = 0.01
SEQUENCE = "HPHPPHHPHPPHPHHPPHPH"
CLAIM_RE = re.compile(r"[0-9]+\.(cpu|gpu[0-9]{1,2})")
PLACED_RE = re.compile(r"placed on (\S+) \(")


def say(line: str) -> None:
    print(line, flush=True)


def gpu_spec(temperature: float) -> str:
    return json.dumps([{"name": "GTX 1070", "vram": "8GB", "cc": "6.1", "temperature_c": temperature,
                        "gflops": 5000}])


def window_closing_now() -> str:
    """Today's window as one that ended this very minute."""
    now = dt.datetime.now()
    day = DAYS[now.weekday()]
    return f'{day} = "none"' if now.hour == now.minute == 0 else f'{day} = ["00:00-{now:%H:%M}"]'


class Pc:
    """One simulated PC and the levers its owner and the operator pull."""

    def __init__(self, cluster: LocalCluster, work: Path, name: str):
        self.cluster, self.name = cluster, name
        self.sensor = work / f"{name}.gpu.json"
        self.policy = work / f"{name}.toml"
        self.input = work / f"{name}.input"  # stands for the PC's keyboard
        self.pause_file = cluster.state_dir / "agents" / f"{name}.pause.json"
        self.claims = cluster.state_dir / "agents" / f"{name}.claims"
        self.input.write_text("")
        self.idle()
        self.heat(False)
        self.window(True)

    def join(self, poll_interval: float) -> None:
        self.cluster.join(self.name, f"@{self.sensor}", "--policy", str(self.policy),
                          "--poll-interval", f"{poll_interval:g}")  # the last --poll-interval wins

    def heat(self, hot: bool) -> None:
        self.sensor.write_text(gpu_spec(90 if hot else 50))

    def window(self, open_: bool) -> None:
        window = 'every_day = "all"' if open_ else window_closing_now()
        self.policy.write_text(f'[idle]\nminutes = {IDLE_MINUTES}\ndevices = ["{self.input}"]\n\n'
                               f'[windows]\n{window}\n\n[gpu]\npause_above_c = 83\nresume_below_c = 75\n')

    def touch(self) -> None:
        """The owner presses a key: the device's access time moves, its modification time does not."""
        os.utime(self.input, (time.time(), os.stat(self.input).st_mtime))

    def idle(self) -> None:
        now = time.time()
        os.utime(self.input, (now - LONG_AGO_S, now - 2 * LONG_AGO_S))

    def operator(self, pause: bool) -> None:
        salvage("worker", "pause" if pause else "resume", self.name, *(["--reason", "benchmark"] if pause else []),
                "--state-dir", str(self.cluster.state_dir))

    def pull(self, kind: str, on: bool) -> None:
        if kind == "heat":
            self.heat(on)
        elif kind == "window":
            self.window(not on)
        elif kind == "input":
            self.touch() if on else self.idle()
        else:
            self.operator(on)

    def claimed(self) -> set[str]:
        """Devices with a live claim (not a done- marker) in the agent's claims directory."""
        try:
            return {m[1] for m in (CLAIM_RE.fullmatch(n) for n in os.listdir(self.claims)) if m}
        except OSError:
            return set()

    def stopped(self, device: str = "gpu0") -> str | None:
        return PauseWatch(str(self.pause_file), device).reason()


class StopWatch(threading.Thread):
    """Started before a trigger: when the pause file first tells gpu0 to stop, and
    when the work's claim on gpu0 first disappears (perf_counter times)."""

    def __init__(self, pc: Pc):
        super().__init__(daemon=True)
        self.pc = pc
        self.paused_at: float | None = None
        self.freed_at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        watch = PauseWatch(str(self.pc.pause_file), "gpu0")
        while not self.done.is_set() and (self.paused_at is None or self.freed_at is None):
            now = time.perf_counter()
            if self.paused_at is None and watch():
                self.paused_at = now
            if self.freed_at is None and "gpu0" not in self.pc.claimed():
                self.freed_at = now
            time.sleep(WATCH_STEP_S)


class YieldWatch(threading.Thread):
    """Started before a training job is submitted: on each PC, when the pause file
    first tells science to step aside, and when science's claim first disappears."""

    def __init__(self, pcs: list[Pc]):
        super().__init__(daemon=True)
        self.pcs = pcs
        self.told: dict[str, float] = {}
        self.freed: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        watches = {pc.name: PauseWatch(str(pc.pause_file), "cpu", science=True) for pc in self.pcs}
        while not self.done.is_set():
            now = time.perf_counter()
            for pc in self.pcs:
                if pc.name not in self.told and watches[pc.name]():
                    self.told[pc.name] = now
                if pc.name not in self.freed and "cpu" not in pc.claimed():
                    self.freed[pc.name] = now
            time.sleep(WATCH_STEP_S)


class Oversleep(threading.Thread):
    """How late this process wakes from a 50 ms nap: the cores' contention."""

    def __init__(self):
        super().__init__(daemon=True)
        self.late: list[float] = []

    def run(self) -> None:
        while True:
            t = time.perf_counter()
            time.sleep(0.05)
            self.late.append(time.perf_counter() - t - 0.05)


class JobLog:
    """A training job's log at the head, read as it grows."""

    def __init__(self, cluster: LocalCluster, job: int):
        self.client = cluster.client()
        self.job = job
        self.entries: list[dict] = []
        self.state = "queued"

    def refresh(self) -> None:
        while True:
            reply = self.client.post("/api/train/logs", {"job": self.job,
                                                        "since": self.entries[-1]["seq"] if self.entries else 0})
            self.state = reply["state"]
            self.entries += reply["entries"]
            if len(reply["entries"]) < 5000:
                return

    @property
    def seq(self) -> int:
        return self.entries[-1]["seq"] if self.entries else 0

    def lines(self, since: int = 0) -> list[str]:
        return [e["data"] for e in self.entries if e["seq"] > since and e["kind"] == "log"]

    def stepping_on(self) -> str | None:
        """The PC of the latest placement, once a step was reported after it."""
        for i in range(len(self.entries) - 1, -1, -1):
            e = self.entries[i]
            m = PLACED_RE.match(e["data"]) if e["kind"] == "log" else None
            if m:
                return m[1] if any(x["kind"] == "progress" for x in self.entries[i + 1:]) else None
        return None

    def first_step_after(self, since: int) -> float | None:
        """The head's time of the first progress after `since`."""
        return next((e["t"] for e in self.entries if e["seq"] > since and e["kind"] == "progress"), None)


def wait_for(check, what: str, timeout_s: float, step_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(step_s)


class Bench:
    def __init__(self, work: Path, n_pcs: int, poll_interval: float, rng: random.Random):
        self.cluster = LocalCluster(work / "state")
        self.work, self.rng, self.poll_interval = work, rng, poll_interval
        self.pcs = [Pc(self.cluster, work, f"pc{i + 1}") for i in range(n_pcs)]
        self.by_name = {pc.name: pc for pc in self.pcs}
        self.client = None
        self.step_s: float | None = None  # the training job's seconds per step on a simulated GPU

    def start(self) -> None:
        self.cluster.up()
        self.client = self.cluster.client()
        for pc in self.pcs:
            pc.join(self.poll_interval)
        for pc in self.pcs:
            self.cluster.wait_state(pc.name, "alive", timeout=240)

    def sd(self, *args: str) -> str:
        return salvage(*args, "--state-dir", str(self.cluster.state_dir)).stdout

    def submit_job(self, *sets: str) -> JobLog:
        out = self.sd("train", "submit", "--data", str(CORPUS), *TINY, *sets)
        return JobLog(self.cluster, int(out.strip().splitlines()[-1]))

    def stop_job(self, log: JobLog) -> None:
        self.sd("train", "stop", str(log.job))

        def ended() -> bool:
            log.refresh()
            return log.state in ("stopped", "done", "failed")
        wait_for(ended, f"training job {log.job} to stop", 120)
        wait_for(lambda: not any("gpu0" in pc.claimed() for pc in self.pcs), "the job's claim to go", 60)

    def submit_science(self, app: str, *args: str) -> int:
        return int(self.sd("science", "submit", app, *args).strip().splitlines()[-1])

    def running_pc(self, log: JobLog, timeout_s: float = 240) -> Pc:
        """The PC whose gpu0 the job steps on now."""
        def find() -> Pc | None:
            log.refresh()
            pc = self.by_name.get(log.stepping_on() or "")
            if pc is None or "gpu0" not in pc.claimed():
                return None
            log.refresh()  # a claim seen after a read of the log could be a newer attempt's, not yet stepping
            return pc if self.by_name.get(log.stepping_on() or "") is pc else None
        return wait_for(find, f"training job {log.job} to step", timeout_s)

    # --- pause latency ---
    def pause_latencies(self, reps: int) -> dict[str, list[dict]]:
        log = self.submit_job("--set", "log_interval=5", "--set", "eval_interval=500")
        out: dict[str, list[dict]] = {kind: [] for kind in TRIGGERS}
        for rep in range(reps):
            for kind in TRIGGERS:
                entry = self.pause_once(log, kind)
                out[kind].append(entry)
                say(f"  {kind:8s} rep {rep + 1}: work stopped {entry['latency_s']:.2f} s after the trigger "
                    f"(pause file {entry['floor_s']:.2f} s; task side {entry['latency_s'] - entry['floor_s']:.2f} s)"
                    f" on {entry['pc']}")
        self.step_s = step_seconds(log)
        self.stop_job(log)
        return out

    def pause_once(self, log: JobLog, kind: str) -> dict:
        pc = self.running_pc(log)
        time.sleep(self.rng.uniform(0.0, self.poll_interval))  # any phase of the agent's poll
        mark = log.seq
        watch = StopWatch(pc)
        watch.start()
        t0 = time.perf_counter()
        pc.pull(kind, True)
        pulled = time.perf_counter()
        watch.join(60)
        watch.done.set()
        if watch.freed_at is None or watch.paused_at is None:
            raise SystemExit(f"{kind} on {pc.name}: the work did not step aside within 60 s")
        pc.pull(kind, False)
        wait_for(lambda: pc.stopped() is None, f"{pc.name} to resume after {kind}", 60)

        def confirmed() -> bool:
            log.refresh()
            return any(line.startswith("requeued: its device was paused") for line in log.lines(mark))
        wait_for(confirmed, f"the job's log to show the {kind} stop", 60)
        return {"pc": pc.name, "latency_s": watch.freed_at - t0, "floor_s": watch.paused_at - t0,
                "command_s": pulled - t0}

    # --- preemption ---
    def preempt_latencies(self, n: int) -> list[dict]:
        # Units far longer than the phase: science holds every PC until training takes one.
        batch = self.submit_science("hp-fold", "--sequence", SEQUENCE, "--seeds", str(24 * len(self.pcs)),
                                    "--params", '{"sweeps": 25000000}', "--quorum", "1", "--replicas", "1")
        out = []
        for i in range(n):
            entry = self.preempt_once()
            out.append(entry)
            say(f"  preempt {i + 1}: the training worker held {entry['pc']}'s device {entry['latency_s']:.2f} s "
                f"after submit, {entry['from_head_s']:.2f} s after the head took the job (taken "
                f"{entry['accepted_s']:.2f} s, command {entry['command_s']:.2f} s, placed {entry['placed_s']:.2f} s, "
                f"science told {entry['science_told_s']:.2f} s, science gone {entry['science_freed_s']:.2f} s; "
                f"first step at the head {entry['first_step_s']:.2f} s; science held it: {entry['science_held_it']})")
        self.sd("science", "cancel", str(batch))
        return out

    def preempt_once(self) -> dict:
        wait_for(lambda: all("cpu" in pc.claimed() for pc in self.pcs), "science on every PC", 240)
        held = {pc.name for pc in self.pcs if "cpu" in pc.claimed()}
        watch = YieldWatch(self.pcs)
        watch.start()
        t0, wall0 = time.perf_counter(), time.time()
        log = self.submit_job("--set", "log_interval=1", "--set", "eval_interval=500")
        submitted = time.perf_counter() - t0
        pc = wait_for(lambda: next((p for p in self.pcs if "gpu0" in p.claimed()), None),
                      "the training worker to hold a device", 300, step_s=WATCH_STEP_S)
        took = time.perf_counter() - t0
        watch.done.set()

        def stepped() -> float | None:
            log.refresh()
            return log.first_step_after(0)
        first = wait_for(stepped, "the first training step", 300) - wall0
        placed = next(e["t"] for e in log.entries if e["kind"] == "log" and PLACED_RE.match(e["data"])) - wall0
        accepted = log.entries[0]["t"] - wall0  # the head's "submitted" line
        self.stop_job(log)
        # Where the time went: the command until the head took the job, the head's placement, the agent
        # telling science, science letting go of the PC's CPU, and Ray starting the training worker there.
        return {"pc": pc.name, "science_held_it": pc.name in held, "latency_s": took, "first_step_s": first,
                "from_head_s": took - accepted, "command_s": submitted, "accepted_s": accepted, "placed_s": placed,
                "science_told_s": watch.told.get(pc.name, float("nan")) - t0,
                "science_freed_s": watch.freed.get(pc.name, float("nan")) - t0}

    # --- work lost under random pauses ---
    def chaos(self, minutes: float) -> dict:
        log = self.submit_job("--set", "log_interval=10", "--set", "eval_interval=100")
        batches: list[int] = []
        active: dict[str, tuple[str, float]] = {}  # pc -> (trigger, until)
        counts = {kind: 0 for kind in TRIGGERS}
        deadline = time.monotonic() + minutes * 60
        next_trigger = next_topup = time.monotonic()
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_topup:
                next_topup = now + 15
                if self.unfinished(batches) < 6 * len(self.pcs):
                    batches.append(self.submit_science("hp-fold", "--sequence", SEQUENCE, "--seeds", "12",
                                                       "--params", '{"sweeps": 37500}'))
                    batches.append(self.submit_science("noop", "--grid", "x=" + ",".join(map(str, range(300)))))
            for name, (kind, until) in list(active.items()):
                if now >= until:
                    if kind != "input":  # the owner stops typing: the idle time runs out by itself
                        self.by_name[name].pull(kind, False)
                    del active[name]
                elif kind == "input":
                    self.by_name[name].touch()  # the owner keeps typing
            if now >= next_trigger and len(active) < len(self.pcs) - 1:
                pc = self.rng.choice([p for p in self.pcs if p.name not in active])
                kind = self.rng.choice(TRIGGERS)
                pc.pull(kind, True)
                counts[kind] += 1
                active[pc.name] = (kind, now + self.rng.uniform(2.0, 12.0))
                next_trigger = now + self.rng.uniform(2.0, 8.0)
            time.sleep(0.25)
        for name, (kind, _until) in active.items():
            self.by_name[name].pull(kind, False)
        say(f"  {sum(counts.values())} pauses ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
            f"waiting for {len(batches)} batches to finish")
        wait_for(lambda: all(pc.stopped() is None for pc in self.pcs), "every PC to resume", 60)
        wait_for(lambda: self.unfinished(batches) == 0, "every batch to finish", 900, step_s=2.0)
        self.stop_job(log)
        log.refresh()
        return {"pauses": counts, **self.science_audit(batches), **training_audit(log.entries)}

    def unfinished(self, batches: list[int]) -> int:
        total = 0
        for b in batches:
            wus = self.client.post("/api/science/status", {"batch": b})["wus"]
            total += wus["total"] - wus["done"] - wus["error"]
        return total

    def science_audit(self, batches: list[int]) -> dict:
        violations = self.client.post("/api/science/check", {})["violations"]
        exported = 0
        once = True
        for b in batches:
            text = self.client.post("/api/science/export", {"batch": b})["text"]
            wus = [json.loads(line)["wu"] for line in text.splitlines()]
            exported += len(wus)
            once &= len(wus) == len(set(wus))
        db = sqlite3.connect(f"file:{self.cluster.state_dir / 'salvage.db'}?mode=ro", uri=True)
        try:
            marks = ",".join("?" * len(batches))
            wu_states = dict(db.execute(f"SELECT state, count(*) FROM sci_wu WHERE batch_id IN ({marks})"
                                        " GROUP BY state", batches).fetchall())
            outcomes = dict(db.execute(f"SELECT outcome, count(*) FROM sci_result WHERE batch_id IN ({marks})"
                                       " GROUP BY outcome", batches).fetchall())
            invalid = db.execute(f"SELECT count(*) FROM sci_result WHERE batch_id IN ({marks}) AND validate = ?",
                                 [*batches, int(ValidateState.INVALID)]).fetchone()[0]
            # The same unit credited twice to one PC, or credit on a copy that is not valid.
            twice = db.execute(f"SELECT count(*) FROM (SELECT wu_id FROM sci_result WHERE batch_id IN ({marks})"
                               " AND credit > 0 GROUP BY wu_id, host_id HAVING count(*) > 1)", batches).fetchone()[0]
            twice += db.execute(f"SELECT count(*) FROM sci_result WHERE batch_id IN ({marks}) AND credit > 0"
                                " AND validate != ?", [*batches, int(ValidateState.VALID)]).fetchone()[0]
        finally:
            db.close()
        n_wu = sum(wu_states.values())
        return {"units": n_wu, "units_done": wu_states.get(int(WuState.DONE), 0),
                "units_lost": n_wu - wu_states.get(int(WuState.DONE), 0),
                "units_exported": exported, "each_unit_once": once,
                "copies_invalid": invalid, "copies_failed": outcomes.get(int(Outcome.CLIENT_ERROR), 0),
                "copies_no_reply": outcomes.get(int(Outcome.NO_REPLY), 0),
                "copies_credited_twice": twice, "store_violations": violations[:5],
                "store_violation_count": len(violations)}


def step_seconds(log: JobLog) -> float | None:
    """The job's median seconds per step, from its progress within each attempt."""
    rates, last = [], None
    for e in log.entries:
        if e["kind"] == "log" and PLACED_RE.match(e["data"]):
            last = None
        elif e["kind"] == "progress":
            p = e["data"]
            if last is not None and p["iter"] > last["iter"] and "val_loss" not in p:
                rates.append((p["elapsed_s"] - last["elapsed_s"]) / (p["iter"] - last["iter"]))
            last = p
    return statistics.median(rates) if rates else None


def training_audit(entries: list[dict]) -> dict:
    """Whether the job ever went back beyond its last checkpoint: at each new
    placement the iteration it resumed from is checked against the newest
    checkpoint it had reported (an evaluation's, or the one it stopped at)."""
    last_ckpt = top = lost = redone = resumes = 0
    stop_at: int | None = None
    placed = resumed_from = None
    for e in entries:
        data = e["data"]
        if e["kind"] == "progress":
            if placed is not None:
                start = resumed_from or 0
                lost += max(0, last_ckpt - start)
                redone += max(0, top - start)
                resumes += 1
                placed = None
            if "val_loss" in data:
                last_ckpt = max(last_ckpt, data["iter"])
            top = max(top, data["iter"])
            continue
        if not isinstance(data, str):
            continue
        if PLACED_RE.match(data):
            placed, resumed_from = (True, None) if top else (None, None)
        elif m := re.match(r"resuming from .* at iter (\d+)", data):
            resumed_from = int(m[1])
        elif m := re.match(r"stopped at iter (\d+); checkpoint saved", data):
            stop_at = int(m[1])
        elif data.startswith("requeued: its device was paused") and stop_at is not None:
            last_ckpt, stop_at = max(last_ckpt, stop_at), None  # handed over: the head confirmed it
    return {"training_iters": top, "training_resumes": resumes, "training_iters_lost": lost,
            "training_iters_redone": redone}


def worst(entries: list[dict], key: str) -> float:
    return round(max(e[key] for e in entries), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pcs", type=int, default=3, help="simulated PCs, --num-cpus 1 each")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each pause trigger")
    parser.add_argument("--preempts", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=10.0, help="the random-pause run")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="the agents' (their default)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not CORPUS.exists():
        sys.exit(f"needs the training corpus at {CORPUS}")
    if args.pcs < 2:
        sys.exit("pcs: expected at least 2 (a paused PC's work moves to another)")

    def interrupted(signum, _frame):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # one clean stop, not a second one on top of it
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally below: the cluster stops
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    oversleep = Oversleep()
    oversleep.start()
    with tempfile.TemporaryDirectory(prefix="salvage-bench-policy-") as tmp:
        bench = Bench(Path(tmp), args.pcs, args.poll_interval, random.Random(args.seed))
        try:
            bench.start()
            say(f"{args.pcs} PCs joined; pause latency, {args.reps} repetitions of each trigger:")
            pauses = bench.pause_latencies(args.reps)
            say(f"preemption, {args.preempts} times:")
            preempts = bench.preempt_latencies(args.preempts)
            say(f"random pauses for {args.minutes:g} min:")
            audit = bench.chaos(args.minutes)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)  # a signal now must not cut the cleanup short
            bench.cluster.down()
    everything = [e for entries in pauses.values() for e in entries]
    pause_worst = worst(everything, "latency_s")
    late = sorted(oversleep.late)
    sched_s = late[int(0.95 * (len(late) - 1))] if late else 0.0
    step_s = bench.step_s or 0.0
    work_lost = (audit["units_lost"] + audit["copies_invalid"] + audit["copies_failed"] + audit["copies_credited_twice"]
                 + audit["store_violation_count"] + audit["training_iters_lost"] + (not audit["each_unit_once"]))
    result = {
        "pause_latency_s": pause_worst,
        "pause_latency_by_trigger_s": {k: worst(v, "latency_s") for k, v in pauses.items()},
        "pause_median_s": round(statistics.median(e["latency_s"] for e in everything), 3),
        "baseline_pause_file_s": worst(everything, "floor_s"),
        "baseline_pause_file_by_trigger_s": {k: worst(v, "floor_s") for k, v in pauses.items()},
        "task_side_worst_s": round(max(e["latency_s"] - e["floor_s"] for e in everything), 3),
        "operator_command_worst_s": worst(pauses["operator"], "command_s"),
        "preempt_latency_s": worst(preempts, "latency_s"),
        "preempt_from_head_s": worst(preempts, "from_head_s"),
        "preempt_command_s": worst(preempts, "accepted_s"),
        "preempt_first_step_s": worst(preempts, "first_step_s"),
        "preempt_science_held_device": all(e["science_held_it"] for e in preempts),
        "work_lost": work_lost,
        **audit,
        "sim_step_s": round(step_s, 4),
        "sched_delay_p95_s": round(sched_s, 4),
        "sim_share_of_pause_worst": round(min(1.0, (step_s + sched_s) / pause_worst), 3),
        "goals": {"pause_latency_s": GOAL_PAUSE_S, "preempt_latency_s": GOAL_PREEMPT_S, "work_lost": 0},
        "pcs": args.pcs, "reps": args.reps, "preempts": args.preempts, "minutes": args.minutes,
        "poll_interval_s": args.poll_interval, "signal": "the training worker's device claim disappears",
    }
    for name, goal in (("pause_latency_s", GOAL_PAUSE_S), ("preempt_latency_s", GOAL_PREEMPT_S)):
        say(f"{name}: worst {result[name]:.2f} s; goal ≤ {goal:g} s: {'meets' if result[name] <= goal else 'MISSES'}")
    say(f"baseline (trigger to pause file): worst {result['baseline_pause_file_s']:.2f} s; "
        f"the task side adds at most {result['task_side_worst_s']:.2f} s")
    say(f"work_lost: {work_lost} ({audit['units_done']}/{audit['units']} units done, "
        f"{audit['store_violation_count']} store violations, {audit['training_iters_lost']} training iterations lost, "
        f"{audit['training_resumes']} resumes); goal 0: {'meets' if work_lost == 0 else 'MISSES'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
