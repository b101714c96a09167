"""A training job spread over many workers: the head's round loop.

Each round: pick this round's workers (one per free device that fits, up to the
job's `workers`), plan each one's local steps from its measured speed and give
all of them the same time to train, send the global parameters out once through
Ray's object store, gather the compressed deltas until the round's deadline,
average them by tokens and take the outer step. Workers that die or miss the
deadline are left out of that round; a PC whose worker died gets a new one at
once, and new workers load while a round trains and join it for the time left.
The head holds only numpy arrays; its maths is in jobs.gpt.outer, the
workers' in jobs.gpt.diloco, and how a round is planned in .planning.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.head.files import disk_full, fsync_dir
from cluster.head.hosts import HostRecords
from cluster.head.metrics import PoolMetrics
from cluster.head.raynodes import RayNodes
from jobs.gpt.codecs import Broadcast
from jobs.gpt.outer import OuterOptimizer, PoolSchedule, average_deltas, pool_lr_scale
from workers.tasks.pool_worker import PoolWorker

from .deltas import Expected, norm_outliers, take
from .options import PoolOptions
from .placement import gpt_bytes_needed, training_slots
from .planning import auto_sync_steps, blend_speed, estimate_speeds, fastest_steps, plan_round, start_retry_wait
from .records import JobRecords

MIN_DEADLINE_S = 20.0
NEW_WORKER_GRACE_S = 60.0  # how long a job's first round waits for its workers to start
MEMBERS_POLL_S = 0.25  # during a round, how often to look for PCs that joined (a cheap read)
DISK_FULL_PAUSE_S = 10.0  # a job stopped by a full disk waits this long before it is started again


@dataclass
class Member:
    key: str  # host/gpuN or host/cpu: one worker per device
    host: str
    gpu: int | None
    node_id: str
    gflops: float
    actor: object
    speed: float | None = None  # tokens/s, measured
    has_copy: bool = False  # holds the last broadcast, so it can take the next as a change
    starting: object = None  # ObjectRef of its info() while it loads data and builds its model
    info: dict | None = None  # set once it is ready: only ready workers get rounds


@dataclass
class PoolState:
    """What a checkpoint holds besides the arrays."""

    round: int = 0
    tokens: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    samplers: dict = field(default_factory=dict)  # member key -> its batch stream's position
    speeds: dict = field(default_factory=dict)
    sync_steps: int = 0
    val_loss: float | None = None
    elapsed_s: float = 0.0


class PoolRun:
    """Runs one pool job in its own thread until it ends, stops or the head stops.

    It writes the job's records and log, finds devices through the hosts table and
    the Ray node view, asks `busy` how many devices each host already trains on
    (its own members included), keeps its checkpoints in `job_dir`, exports the
    global model for `train sample` to `export_path`, and calls `on_end` when its
    thread ends."""

    def __init__(self, job: dict, attempt: int, records: JobRecords, hosts: HostRecords, nodes: RayNodes,
                 busy: Callable[[], dict[str, int]], job_dir: Path, export_path: Path, metrics: PoolMetrics,
                 stopping: threading.Event, on_end: Callable[[], None]):
        self.records = records
        self.hosts = hosts
        self.nodes = nodes
        self.busy = busy
        self.export_path = export_path
        self.metrics = metrics
        self.stopping = stopping
        self.on_end = on_end
        self.job_id = job["id"]
        self.attempt = attempt
        self.config = json.loads(job["config_json"])
        self.data = job["data"]
        self.options = PoolOptions.from_dict(json.loads(job["pool_json"]))
        t, m = self.config["train"], self.config["model"]
        self.tokens_per_step = t["batch_size"] * m["block_size"]
        self.total_tokens = int(t["max_iters"] * self.tokens_per_step * self.options.token_factor)
        self.eval_every_tokens = t["eval_interval"] * self.tokens_per_step * self.options.token_factor
        self.need_bytes = gpt_bytes_needed(m)
        self.dir = job_dir
        self.dir.mkdir(exist_ok=True)
        self.members: dict[str, Member] = {}
        self.params: np.ndarray | None = None
        self.outer = None
        self.broadcast = None
        self.fresh = True  # no checkpoint was loaded
        self.state = PoolState()
        self.waiting_said = ""
        self.evaluated_round = -1
        self.planned_speeds: dict[str, float] = {}  # tokens/s per worker, as the last plan assumed
        self.typical_norm: float | None = None  # delta norm per step of recent rounds, for lone workers
        self.last_round = False  # the last plan spends the job's remaining tokens
        self.timed = False  # the last plan's speeds are measured tokens/s, so its times are real
        self.started_any = False  # a worker of this attempt has started
        self.start_error: str | None = None  # the last error a worker raised while starting
        self.retry: dict[str, tuple[float, int]] = {}  # host -> (when to try it again, failed starts)
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"pool-{self.job_id}")

    # --- bookkeeping ---
    def start(self) -> None:
        self.thread.start()

    def busy_devices(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in list(self.members.values()):
            out[m.host] = out.get(m.host, 0) + 1
        return out

    def log(self, text: str) -> None:
        self.records.log(self.job_id, "log", text)

    def _stopping(self) -> bool:
        return self.stopping.is_set()

    # --- checkpoints ---
    @property
    def pool_ckpt(self) -> Path:
        return self.dir / "pool.npz"

    @property
    def previous_ckpt(self) -> Path:
        return self.dir / "pool.prev.npz"

    def load_checkpoint(self) -> bool:
        """The newest pool checkpoint that reads whole and finite; the one before it
        if not (the last two are kept). False if there is none."""
        for path in (self.pool_ckpt, self.previous_ckpt):
            if not path.exists():
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    params = z["params"].astype(np.float32)
                    momentum = z["momentum"].astype(np.float32)
                    state = PoolState(**json.loads(str(z["state"])))
            except (OSError, ValueError, KeyError, TypeError) as err:
                self.log(f"pool checkpoint {path.name} is unreadable ({type(err).__name__}); trying the one before")
                continue
            if params.shape != momentum.shape or not (np.isfinite(params).all() and np.isfinite(momentum).all()):
                self.log(f"pool checkpoint {path.name} is not finite; trying the one before")
                continue
            self.params, self.state = params, state
            self.outer = OuterOptimizer(params.size, self.options.outer_lr, self.options.outer_momentum)
            self.outer.buf = momentum
            return True
        return False

    def save_checkpoint(self) -> None:
        tmp = self.dir / f".pool.{threading.get_ident()}.tmp.npz"
        np.savez(tmp, params=self.params, momentum=self.outer.buf, state=np.array(json.dumps(asdict(self.state))))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if self.pool_ckpt.exists():
            os.replace(self.pool_ckpt, self.previous_ckpt)  # the last good one is kept beside the new
        os.replace(tmp, self.pool_ckpt)
        fsync_dir(self.dir)

    def export(self, member: Member, val_loss: float | None) -> None:
        """The global model as a single-worker checkpoint, for `train sample`."""
        blob = ray.get(member.actor.export.remote(self.params, self.state.tokens, val_loss), timeout=120)
        dest = self.export_path
        tmp = dest.with_name(f".{dest.name}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        self.records.set(self.job_id, checkpoint=str(dest))

    # --- membership ---
    def sync_members(self, boundary: bool = False) -> None:
        """Drop workers whose PC is gone or whose device is paused or unhealthy (at
        a round's `boundary` also those drained, which finish their round first),
        and start one on every free device that fits, fastest first, up to the
        job's `workers`."""
        allowed = {h.strip() for h in self.options.hosts.split(",") if h.strip()}
        alive = {r.name: r for r in self.hosts.alive() if not allowed or r.name in allowed}
        now = time.monotonic()
        for key, m in list(self.members.items()):
            row = alive.get(m.host)
            if row is None or self.nodes.alive(row.ray_node_id) is None or row.ray_node_id != m.node_id:
                self.drop(key, f"host {m.host} is gone")
            elif row.blocked(m.gpu) and (boundary or not row.drained(m.gpu)):
                self.drop(key, row.blocked(m.gpu))
        cap = self.options.workers or 10**9
        busy = self.busy()  # this job's own members included
        candidates = []
        for name, row in alive.items():
            node = self.nodes.alive(row.ray_node_id)
            if node is None or self.retry.get(name, (0.0, 0))[0] > now:
                continue
            for slot in training_slots(row.info, busy.get(name, 0), self.need_bytes, self.options.allow_cpu):
                if row.blocked(slot.gpu) is None:
                    candidates.append((slot, node["NodeID"]))
        candidates.sort(key=lambda c: -c[0].speed_gflops)
        for slot, node_id in candidates:
            if len(self.members) >= cap:
                break
            key = f"{slot.host}/{'cpu' if slot.gpu is None else f'gpu{slot.gpu}'}"
            if key in self.members:
                continue
            seed = self.config["train"]["seed"] + 7919 * (self.state.round + 1) + len(self.members)
            actor = ray.remote(PoolWorker).options(
                num_cpus=1, num_gpus=0 if slot.gpu is None else 1, max_restarts=0, max_concurrency=1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(self.config, self.data, seed, self.options.codec, self.state.samplers.get(key),
                     "cpu" if slot.gpu is None else f"gpu{slot.gpu}")
            self.members[key] = Member(key, slot.host, slot.gpu, node_id, slot.speed_gflops, actor,
                                       speed=self.state.speeds.get(key),
                                       starting=actor.info.remote())

    def admit(self, wait_s: float, say: bool = True) -> list[Member]:
        """Let workers that have finished starting into the next round; returns them
        (`say`: log that they join it). A new PC loads its data and builds its model
        while the others train, so its start never holds a round up; `wait_s` waits
        for the starting ones (job start)."""
        starting = {m.starting: m for m in self.members.values() if m.info is None}
        if not starting:
            return []
        ready, _ = ray.wait(list(starting), num_returns=len(starting), timeout=wait_s)
        admitted = []
        for ref in ready:
            m = starting[ref]
            try:
                m.info = ray.get(ref)
            except ray.exceptions.RayError as err:
                error = _short(err)
                why = f"could not start ({error})"
                if getattr(err, "actor_init_failed", False):  # it raised, so trying again at once would too
                    failed = self.retry.get(m.host, (0.0, 0))[1] + 1
                    wait = start_retry_wait(failed)
                    self.retry[m.host] = (time.monotonic() + wait, failed)
                    self.start_error = error
                    why += f"; {m.host} is tried again in {wait:.0f} s"
                self.drop(m.key, why)
                continue
            self.retry.pop(m.host, None)
            self.started_any = True
            # Before the first outer step every worker holds the seeded initial model.
            m.has_copy = self.fresh and self.state.round == 0
            if say:
                self.log_join(m, f"at round {self.state.round + 1}")
            admitted.append(m)
        return admitted

    def log_join(self, m: Member, when: str) -> None:
        device = "CPU" if m.gpu is None else f"GPU {m.gpu}"
        self.log(f"worker {m.key} joins {when} ({device}: {m.info['device']}, {m.gflops:.0f} GFLOP/s)")

    def ready(self) -> dict[str, Member]:
        return {k: m for k, m in self.members.items() if m.info is not None}

    def drop(self, key: str, why: str) -> None:
        m = self.members.pop(key, None)
        if m is None:
            return
        _kill(m.actor)
        self.log(f"worker {key} left out: {why}")

    # --- rounds ---
    def estimate_speeds(self) -> tuple[dict[str, float], bool]:
        return estimate_speeds({k: (m.speed, m.gflops) for k, m in self.ready().items()})

    def plan(self) -> dict[str, int]:
        speeds, self.timed = self.estimate_speeds()
        remaining = (self.total_tokens - self.state.tokens) / self.tokens_per_step
        top = fastest_steps(self.options, self.state.round, self.state.sync_steps)
        steps, self.last_round = plan_round(speeds, top, remaining)
        self.planned_speeds = speeds
        return steps

    def run_round(self) -> None:
        """One round with the workers that are ready now.

        It plans each worker's steps from its measured speed (`plan`), sends the
        global parameters once through Ray's object store (as a change to the copy
        a worker holds, or whole to a new one), and waits for the deltas until the
        round's deadline while new PCs load and may join for the time left. A worker
        that dies, misses the deadline or sends a result the head refuses (a delta of
        the wrong shape or codec, not finite, far larger than its peers', more tokens
        than its plan allows; see `deltas`) is left out of the round with the reason
        logged; the others' deltas are averaged by tokens for the outer step. It
        updates the job's state (round, tokens, speeds), its log and progress; a
        round in which no worker finished changes nothing and is repeated."""
        steps = self.plan()
        round_tokens = sum(steps.values()) * self.tokens_per_step
        lr_scale = self.options.lr_scale or pool_lr_scale(list(self.planned_speeds.values()))
        schedule = PoolSchedule(total_tokens=self.total_tokens, lr_scale=lr_scale)
        if self.broadcast is None:  # every worker is new: each gets the parameters whole
            self.broadcast = Broadcast(self.params, self.options.codec)
        change = self.broadcast.message(self.params)
        # Workers train for the time the plan gives the fastest one rather than for a
        # fixed count, so a misjudged speed costs neither waiting nor idling. The
        # first round (nothing measured yet) and the last (exactly the tokens left)
        # run the planned steps.
        expected = max(steps[k] * self.tokens_per_step / self.planned_speeds[k] for k in steps)
        budget = expected if self.timed and not self.last_round else None
        t0 = time.monotonic()
        change_ref = ray.put(change)
        whole = whole_ref = None
        refs, sent, dispatched, planned = {}, {}, {}, {}

        def send(m: Member, n: int, budget_s: float | None, speed: float, others_speed: float) -> None:
            nonlocal whole, whole_ref
            if m.has_copy:
                msg_ref, sent[m.key] = change_ref, change.nbytes
            else:  # a new worker gets the parameters whole, once
                if whole is None:
                    whole = self.broadcast.full()
                    whole_ref = ray.put(whole)
                msg_ref, sent[m.key] = whole_ref, whole.nbytes
            dispatched[m.key] = m
            planned[m.key] = n if budget_s is None else 2 * n  # a timed worker steps at most twice its plan
            # A second past the budget idles every other worker: their speed over its own.
            overrun_cost = min(100.0, others_speed / max(speed, 1e-9))
            refs[m.key] = m.actor.run_round.remote([msg_ref], n, self.state.tokens, round_tokens, schedule, budget_s,
                                                   overrun_cost)

        pool_speed = sum(self.planned_speeds.values())
        for k, n in steps.items():
            send(self.members[k], n, budget, self.planned_speeds[k], pool_speed - self.planned_speeds[k])
        deadline = max(MIN_DEADLINE_S, 3 * expected)
        # A worker that finishes loading while a timed round trains joins it for the time left.
        join = (lambda: self.join_late(send, t0 + expected, pool_speed)) if budget is not None else None
        results = self.await_round(refs, dispatched, deadline, join)
        round_wall = time.monotonic() - t0
        round_no = self.state.round + 1
        taken: dict[str, object] = {}
        for key, r in refs.items():
            m = dispatched[key]
            if self.members.get(key) is not m:
                continue  # left during the round (died, or a PC back under its old name is a new member)
            if r not in results:
                self.drop(key, f"missed round {round_no}'s deadline ({deadline:.0f} s)")
                continue
            value, arrived = results[r]
            result = take(value, Expected(self.options.codec, self.params.size, self.tokens_per_step, planned[key]),
                          arrived - t0)
            if isinstance(result, str):
                self.drop(key, f"its round {round_no} result was refused ({result})")
                continue
            if not math.isfinite(result.loss):
                self.drop(key, f"its loss became {result.loss} in round {round_no}")
                continue
            taken[key] = result
        for key in norm_outliers({k: t.norm_per_step for k, t in taken.items()}, self.typical_norm):
            self.drop(key, f"its round {round_no} delta was refused (norm {taken[key].norm_per_step:.3g} per step, "
                           f"far above the others')")
            del taken[key]
        deltas, losses, report = [], [], []
        compute_wall = 0.0
        for key, t in taken.items():
            m = dispatched[key]
            m.has_copy = True
            deltas.append((t.delta, t.tokens))
            losses.append((t.loss, t.tokens))
            measured = t.tokens / t.compute_s
            m.speed = blend_speed(m.speed, measured)
            wait = max(0.0, round_wall - t.compute_s)
            compute_wall = max(compute_wall, t.compute_s)
            self.state.samplers[key] = t.sampler
            self.state.speeds[key] = m.speed
            self.state.bytes_up += t.nbytes
            self.state.bytes_down += sent[key]
            self.metrics.worker_round(self.job_id, key, wait, t.nbytes, sent[key])
            report.append({"worker": key, "steps": t.steps, "tokens_per_s": round(measured), "wait_s": round(wait, 2)})
        if taken:
            typical = float(np.median([t.norm_per_step for t in taken.values()]))
            self.typical_norm = typical if self.typical_norm is None else 0.5 * (self.typical_norm + typical)
        if not deltas:
            self.log(f"round {self.state.round + 1}: no worker finished; the round is repeated")
            return
        self.params = self.outer.step(self.params, average_deltas(deltas))
        self.state.round += 1
        done_tokens = sum(t for _, t in deltas)
        self.state.tokens += done_tokens
        self.state.elapsed_s += round_wall
        fast = max(steps, key=lambda k: self.planned_speeds[k])
        if fast in self.members and self.members[fast].speed:
            self.state.sync_steps = auto_sync_steps(round_wall, compute_wall,
                                                    self.tokens_per_step / self.members[fast].speed)
        self.metrics.round(self.job_id, round_wall)
        if self.options.keep_history:
            hist = self.dir / "history"
            hist.mkdir(exist_ok=True)
            np.save(hist / f"round-{self.state.round:05d}.npy", self.params)
        train_loss = sum(lo * t for lo, t in losses) / sum(t for _, t in losses)
        rate = done_tokens / round_wall
        progress = {
            "round": self.state.round, "iter": self.state.tokens // self.tokens_per_step,
            "max_iters": self.total_tokens // self.tokens_per_step, "tokens": self.state.tokens,
            "train_loss": train_loss, "tokens_per_s": rate, "round_s": round_wall, "lr_scale": lr_scale,
            "eta_s": max(0, self.total_tokens - self.state.tokens) / rate if rate > 0 else None,
            "bytes_up": self.state.bytes_up, "bytes_down": self.state.bytes_down,
            "elapsed_s": self.state.elapsed_s, "t_wall": time.time(), "workers": report,
        }
        self.records.log(self.job_id, "progress", progress)
        latest = ("round", "iter", "train_loss", "tokens_per_s", "workers")
        self.records.merge_progress(self.job_id, {k: progress[k] for k in latest})

    def await_round(self, refs: dict, dispatched: dict, deadline_s: float, join=None) -> dict:
        """The round's results that came by its deadline: ref -> (value, when it
        arrived), each taken as it comes so the head knows how long each worker took.
        A worker that dies is dropped at once and its PC gets a new one started at
        once; PCs that joined get one at the next look (every MEMBERS_POLL_S). Each
        loads while this round trains; `join` lets the ready ones in, the moment
        one is ready rather than at the next look."""
        end = time.monotonic() + deadline_s
        next_sync = time.monotonic() + MEMBERS_POLL_S
        results, failed = {}, set()
        loaded = set()  # starting workers seen ready: `join` has had its chance at them
        while True:
            key_of = {r: k for k, r in refs.items() if r not in results and r not in failed}
            now = time.monotonic()
            if not key_of or now >= end:
                return results
            starting = [m.starting for m in self.members.values()
                        if join is not None and m.info is None and m.starting not in loaded]
            ready, _ = ray.wait(list(key_of) + starting, num_returns=1,
                                timeout=max(0.0, min(end, next_sync) - now))
            arrived = time.monotonic()
            for ref in ready:
                if ref not in key_of:  # a starting worker has loaded
                    loaded.add(ref)
                    join()
                    continue
                key = key_of[ref]
                try:
                    results[ref] = (ray.get(ref), arrived)
                except ray.exceptions.RayError as err:
                    failed.add(ref)
                    if self.members.get(key) is dispatched[key]:
                        paused = "WorkerPaused" in str(err)  # its device stepped aside: not a failure
                        self.drop(key, f"{_short(err)} in round {self.state.round + 1}" if paused
                                  else f"died in round {self.state.round + 1} ({type(err).__name__})")
                        next_sync = arrived  # its PC gets a new worker now, not at the next poll
            if time.monotonic() >= next_sync and time.monotonic() < end:
                self.sync_members()
                if join is not None:
                    join()
                next_sync = time.monotonic() + MEMBERS_POLL_S

    def join_late(self, send, round_end: float, pool_speed: float) -> None:
        """Workers that finished loading during the round join it with the steps that
        fit in the time it has left, rather than idling until the next one."""
        left = round_end - time.monotonic()
        admitted = self.admit(wait_s=0.0, say=False) if left > 0 else []
        if not admitted:
            return
        speeds, _ = self.estimate_speeds()
        round_no = self.state.round + 1
        for m in admitted:
            n = int(left * speeds[m.key] / self.tokens_per_step)
            if n >= 1:
                self.log_join(m, f"round {round_no} mid-way ({left:.1f} s left)")
                send(m, n, left, speeds[m.key], pool_speed)
            else:  # too little of this round left for one step
                self.log_join(m, f"at round {round_no + 1}")

    # --- the job ---
    def _main(self) -> None:
        try:
            self._run()
        except Exception as err:  # an internal error fails this job, not the head
            if self._stopping():
                return  # Ray going down with the head: the job resumes after `up`
            if disk_full(err):  # not the job's fault: it goes back to the queue and resumes later
                self.stopping.wait(DISK_FULL_PAUSE_S)
                return
            self.fail(f"internal: {err!r}"[:300])
        finally:
            for m in self.members.values():
                _kill(m.actor)
            self.members.clear()
            self.on_end()

    def _run(self) -> None:
        if self.load_checkpoint():
            self.fresh = False
            self.log(f"resuming from the pool checkpoint at round {self.state.round} "
                     f"({self.state.tokens:,} of {self.total_tokens:,} tokens)")
        next_eval = (self.state.tokens // self.eval_every_tokens + 1) * self.eval_every_tokens
        while self.state.tokens < self.total_tokens:
            if self._stopping():
                return  # the head is going down: the job resumes from its checkpoint after `up`
            if self.records.get(self.job_id)["stop_requested"]:
                self.finish("stopped")
                return
            self.sync_members(boundary=True)
            self.admit(wait_s=0.0 if self.ready() else NEW_WORKER_GRACE_S)
            if not self.members and self.start_error and not self.started_any:
                # Every worker raised while starting: an error in the job (its data, its
                # settings) more likely than in the PCs, so say it rather than retry forever.
                self.fail(f"no worker could start: {self.start_error}")
                return
            if not self.ready():
                why = "waiting: no live worker fits this job (it needs a free GPU or CPU that fits the model)"
                if any(when > time.monotonic() for when, _ in self.retry.values()):
                    why = f"waiting: workers could not start ({self.start_error}); their PCs are tried again soon"
                if why != self.waiting_said:
                    self.log(why)
                    self.waiting_said = why
                time.sleep(2.0)
                continue
            self.waiting_said = ""
            if self.params is None:
                first = next(iter(self.ready().values()))
                info = first.info
                try:
                    self.params = ray.get(first.actor.initial_params.remote(), timeout=60)
                except ray.exceptions.RayError as err:
                    self.drop(first.key, f"could not start ({_short(err)})")
                    continue
                self.outer = OuterOptimizer(self.params.size, self.options.outer_lr, self.options.outer_momentum)
                self.log(f"model: {info['n_params'] / 1e6:.2f}M parameters on {info['device']}; "
                         f"data: {info['data']}" + (f" ({info['note']})" if info["note"] else ""))
                self.log(f"pool: {self.total_tokens:,} tokens, deltas as {self.options.codec}, outer step "
                         f"lr {self.options.outer_lr} momentum {self.options.outer_momentum}, inner lr x "
                         + (f"{self.options.lr_scale:g}" if self.options.lr_scale
                            else "the pool's speed over its fastest")
                         + ", sync every "
                         + (f"{self.options.sync_steps} steps" if self.options.sync_steps else "auto (link)"))
            self.run_round()
            if self.state.round % self.options.checkpoint_rounds == 0:
                self.save_checkpoint()
            if self.state.tokens >= next_eval and self.ready():
                self.evaluate()
                next_eval += self.eval_every_tokens
        self.finish("done")

    def evaluate(self) -> None:
        fastest = max(self.ready().values(), key=lambda m: m.speed or 0.0)
        try:
            val = ray.get(fastest.actor.evaluate.remote(self.params), timeout=300)
            self.state.val_loss = val
            self.evaluated_round = self.state.round
            self.export(fastest, val)
        except ray.exceptions.RayError as err:
            self.log(f"evaluation skipped: {fastest.key} failed ({_short(err)})")
            return
        self.save_checkpoint()
        self.records.log(self.job_id, "progress", {"round": self.state.round, "iter": self.state.tokens //
                                                 self.tokens_per_step, "val_loss": val,
                                                 "max_iters": self.total_tokens // self.tokens_per_step})
        merged = {"iter": self.state.tokens // self.tokens_per_step, "val_loss": val, "round": self.state.round}
        self.records.merge_progress(self.job_id, merged)

    def fail(self, error: str) -> None:
        self.records.set(self.job_id, state="failed", error=error, finished_at=time.time())
        self.log(f"failed: {error}")

    def finish(self, state: str) -> None:
        if self.params is not None and self.ready() and self.evaluated_round != self.state.round:
            self.evaluate()
        if self.params is not None:
            self.save_checkpoint()
        summary = {"rounds": self.state.round, "tokens": self.state.tokens, "val_loss": self.state.val_loss,
                   "bytes_up": self.state.bytes_up, "bytes_down": self.state.bytes_down,
                   "elapsed_s": self.state.elapsed_s,
                   "tokens_per_s": self.state.tokens / self.state.elapsed_s if self.state.elapsed_s else None}
        self.records.set(self.job_id, state=state, summary_json=json.dumps(summary), finished_at=time.time())
        self.log(f"{state} after {self.state.round} rounds, {self.state.tokens:,} tokens: val loss "
                 f"{self.state.val_loss if self.state.val_loss is None else round(self.state.val_loss, 4)}")


def _kill(actor) -> None:
    try:
        ray.kill(actor)
    except Exception:  # already gone with its node
        pass


def _short(err: Exception) -> str:
    """The error's last line (Ray's put the worker's own exception there), its
    exception named without its module path."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    return re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", text.splitlines()[-1])[:300]
