"""Training across an uneven pool: efficiency, speedup over the fastest member,
the traffic/speed frontier, Ray Train's DDP as the peer, and churn.

    python benchmarks/train_pool.py [--quick] [--sync 17,42,88] [--factor 1.2,1.3,1.5] [--skip-peer]
                                    [--churn worker,power|none] [--duty-scale 1.0]

The pool: a loopback cluster (`salvage cluster up`) and four `salvage worker join`
PCs, CPU-only with one core each, at `--duty-cycle` 0.4, 0.2, 0.1 and 0.05:
speeds 1, 1/2, 1/4, 1/8 of the fastest. The whole pool asks for 0.75 of this
machine's 2 cores, leaving the rest to the head and Ray's five nodes, so what the
figures measure is the pool, not PCs fighting over cores (`eta_compute` near 1
shows it; at 1.125 cores, `--duty-scale 1.5`, the PCs lost 4-12% to each other).
Everything runs through the real job path (`salvage train submit --workers ...`),
with the CPU preset on Tiny Shakespeare.

Measured, in this order, in one run:
  T1, L*       the fastest PC alone on the preset's 1,536,000 tokens (rounds of 100
               steps, outer step = plain replacement, fp32). L* is its final val
               loss, T1 its wall time to reach L*.
  solo speeds  each PC alone at its duty cycle (a one-worker job pinned to it):
               tokens/s over its rounds after the first. Measured again after
               every pool run below, and each run is compared with the mean of the
               sets just before and just after it: this machine's own speed drifts
               by up to 15% over minutes, more than the pool's losses
               (`solo_drift`: the largest summed solo speed over the smallest).
  frontier     the pool at each sync interval (`--sync-steps`: rounds as long as
               that many steps on the fastest PC): bytes_ratio and speedup = T1 / time to L*.
               speedup_drift_adj: the same with T1 scaled to the machine's speed
               during the run (by the summed solo speeds of the set measured just
               after T1 over those around the run); it shows how much of speedup is
               drift. The goals are on speedup.
  peer         Ray Train TorchTrainer, DDP over gloo, batch 12 per worker on the
               same four PCs, same duty cycles, the preset's schedule over its
               1,536,000 tokens (stopped after --peer-cap x T1 of training).
  churn        the best LAN setting again, while in 30% of rounds a random training
               worker is killed (`churn_speedup`: its process; the pool starts a new
               one on the same PC) or its whole PC loses power and restarts two rounds
               later (`churn_power_speedup`). `rounds_out`: how many rounds each lost
               PC did not train.
               churn_retained: the pool's training rate under churn over the summed
               solo speeds of the PCs that were powered on, second by second over the
               rounds after the first (a PC counts from the moment its agent starts
               again, so its start-up and the round it died in count against the
               pool); from the worker-kill run, and `churn_power_retained` from the
               power-cut run. rejoin_s: the median time from a PC's agent starting
               again to the end of the first round it contributed to (power-cut run);
               respawn_s the same from a killed worker (worker-kill run). start_s: the
               median time from a PC's agent starting to its worker joining a round
               (agent, Ray node, worker and torch started), and
               churn_power_retained_after_start the power-cut run's retained with each
               PC counted from then: the share of the loss that is start-up.

Times are wall time from the start of a job's first round (workers' start-up left
out, for the solo run the same way); what happens between rounds is included. Validation loss is measured
afterwards on every kept round's global parameters with one fixed set of 50
validation batches, so the evaluation costs the runs nothing.

eta splits in two: eta_compute, the workers' own speeds in the pool over their
speeds alone (what four simulated PCs sharing this machine's cores lose), and
eta_rounds, the pool's training rate over its workers' summed speeds (what the
rounds lose: fetching parameters, waiting for the slowest).

bytes_ratio: what per-step synchronous data parallelism would move for the same
tokens (each of 4 workers sends and receives 2*(n-1)/n of the fp32 gradient every
step: a ring all-reduce), divided by the bytes our rounds moved: every worker's
compressed delta up and the compressed change of the global parameters down,
every round, plus the whole fp32 parameters for each worker that joins late.

The LAST line printed is a JSON object with eta (and its two parts), frontier,
speedup, speedup_at_400, peer_eta, peer_speedup, churn_retained, rejoin_s,
churn_speedup (and their power-cut twins) and the raw figures behind them.
Ctrl-C, SIGTERM or SIGHUP stop the cluster it started.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "support"))

from localcluster import LocalCluster, salvage  # noqa: E402

from jobs.gpt.batches import fixed_batches  # noqa: E402
from jobs.gpt.config import load_config  # noqa: E402
from jobs.gpt.data import default_cache_dir, prepare_data  # noqa: E402
from jobs.gpt.diloco import load_flat  # noqa: E402
from jobs.gpt.model import GPT  # noqa: E402
from jobs.gpt.outer import allreduce_bytes  # noqa: E402
from jobs.gpt.train import evaluate  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
POOL = {"w1": 0.4, "w2": 0.2, "w3": 0.1, "w4": 0.05}  # duty cycles: 0.75 cores asked of 2
VAL_BATCHES, VAL_SEED = 50, 99
QUICK = ["n_layer=2", "n_head=2", "n_embd=64", "max_iters=400", "lr_decay_iters=400", "warmup_iters=20"]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, state_dir: Path, sets: list[str]):
        self.cluster = LocalCluster(state_dir)
        self.sets = sets
        self.cfg = load_config("shakespeare-char-cpu", overrides=dict(_kv(s) for s in sets))
        self.tps = self.cfg.train.batch_size * self.cfg.model.block_size
        self.data = prepare_data(str(CORPUS), "char", self.cfg.model.block_size, default_cache_dir())
        self.val = fixed_batches(self.data.val, self.cfg.model.block_size, 12, VAL_BATCHES, VAL_SEED)
        torch.set_num_threads(1)
        self.model = GPT(replace(self.cfg.model, vocab_size=self.data.tokenizer.vocab_size))

    # --- cluster ---
    def start(self) -> None:
        self.cluster.up()
        for name in POOL:
            self.join(name)
        for name in POOL:
            self.cluster.wait_state(name, "alive", timeout=120)

    def join(self, name: str) -> None:
        # The agent's default poll interval (the test harness polls every second).
        self.cluster.join(name, "", "--duty-cycle", str(POOL[name]), "--poll-interval", "5")

    def submit(self, *extra: str) -> int:
        sets = [x for s in self.sets for x in ("--set", s)]
        out = salvage("train", "submit", "--state-dir", str(self.cluster.state_dir), "--data", str(CORPUS),
                      *sets, *extra)
        return int(out.stdout.strip().splitlines()[-1])

    def query(self, sql: str, *args) -> list[tuple]:
        """Rows from the head's database, read-only beside the running head."""
        db = sqlite3.connect(f"file:{self.cluster.state_dir / 'salvage.db'}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def rounds(self, job: int) -> list[dict]:
        rows = self.query("SELECT data_json FROM train_log WHERE job_id = ? AND kind = 'progress' ORDER BY seq", job)
        self.last_state = self.query("SELECT state, error FROM train_jobs WHERE id = ?", job)[0]
        return [d for (raw,) in rows if "train_loss" in (d := json.loads(raw))]

    def joins(self, job: int) -> list[tuple[float, str]]:
        """(when, worker key) of each worker's join in the job's log: the moment it had
        loaded and the pool gave it steps."""
        rows = self.query("SELECT t, data_json FROM train_log WHERE job_id = ? AND kind = 'log' ORDER BY seq", job)
        return [(t, m.group(1)) for t, raw in rows if (m := re.match(r"worker (\S+) joins ", json.loads(raw)))]

    def wait(self, job: int, on_round=None, timeout: float = 3600) -> list[dict]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            rounds = self.rounds(job)
            if on_round is not None and len(rounds) > seen:
                on_round(rounds[-1])
            seen = len(rounds)
            if self.last_state[0] in ("done", "failed", "stopped"):
                if self.last_state[0] != "done":
                    raise SystemExit(f"job {job} {self.last_state[0]}: {self.last_state[1]}")
                return rounds
            time.sleep(0.5)
        raise SystemExit(f"job {job} did not finish in {timeout:.0f} s")

    # --- measurements ---
    def val_loss(self, job: int, round_no: int) -> float:
        params = np.load(self.cluster.state_dir / "jobs" / f"train-{job}" / "history" / f"round-{round_no:05d}.npy")
        load_flat(self.model, params)
        return evaluate(self.model, self.val, 12, torch.device("cpu"))

    def time_to(self, job: int, rounds: list[dict], target: float) -> tuple[float | None, float]:
        """Wall time from the start of the first round until the global model first
        reaches `target` (everything between rounds included), and the final val loss.
        Scans back from the end: the loss falls nearly monotonically, so the crossing
        is found after evaluating only the rounds below the target plus one."""
        start = rounds[0]["t_wall"] - rounds[0]["round_s"]
        final = self.val_loss(job, rounds[-1]["round"])
        hit = None
        for r in reversed(rounds):
            if self.val_loss(job, r["round"]) > target:
                break
            hit = r
        return (hit["t_wall"] - start if hit else None), final

    def solo_job(self, pc: str, steps: int, rounds: int, *extra: str) -> int:
        """`steps` steps on one PC alone, in `rounds` rounds whose outer step is plain
        replacement in fp32: the single-worker job, measured the way the pool is."""
        return self.submit("--workers", "1", "--sync-steps", str(max(1, steps // rounds)), "--codec", "fp32",
                           "--pool-set", f'hosts="{pc}"', "--pool-set", "outer_lr=1.0", "--pool-set",
                           "outer_momentum=0.0", "--pool-set", f"token_factor={steps / self.cfg.train.max_iters}",
                           *extra)

    def solo_speeds(self) -> dict[str, float]:
        """Each PC training by itself, one at a time (a one-worker job pinned to it)."""
        steps = {name: max(10, int(250 * duty)) for name, duty in POOL.items()}
        speeds = {name: steady_rate(self.wait(self.solo_job(name, n, 5))) for name, n in steps.items()}
        say("solo (tokens/s): " + ", ".join(f"{name} {speed:.0f}" for name, speed in speeds.items()))
        return speeds

    def pool_run(self, sync: int, factor: float, codec: str, churn: str = "") -> dict:
        job = self.submit("--workers", "all", "--sync-steps", str(sync), "--codec", codec,
                          "--pool-set", "keep_history=true", "--pool-set", f"token_factor={factor}",
                          "--pool-set", "checkpoint_rounds=1000")
        killer = Churn(self, churn) if churn else None
        rounds = self.wait(job, on_round=killer.on_round if killer else None)
        if killer:
            killer.finish()
        return {"job": job, "rounds": rounds, "kills": killer.log if killer else [], "churn": killer}


class SoloSpeeds:
    """The solo speeds a pool run is compared with: the mean of the sets measured
    just before and just after it, so the machine's drift between the two cancels
    to first order rather than land in eta."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.sets = [bench.solo_speeds()]

    def around_last_run(self) -> dict[str, float]:
        before, after = self.sets[-1], self.bench.solo_speeds()
        self.sets.append(after)
        return {pc: (before[pc] + after[pc]) / 2 for pc in POOL}

    def drift(self) -> float:
        sums = [sum(s.values()) for s in self.sets]
        return max(sums) / min(sums)


class Churn:
    """In 30% of rounds a random PC that is training loses its worker, in one of two ways.

    worker  the training worker's process is killed (a crash, the OOM killer, the
            owner ending it). The PC, its agent and its Ray node stay; the pool starts
            a new worker there when it sees the loss, and that one rejoins once loaded.
    power   the PC loses power: its whole process tree is killed, and two rounds later
            it comes back: a new agent under its own name, which takes the name back
            from the dead one (the head asks for two missed beats and a silent metrics
            port, not the 20 s after which it would see the PC lost). It trains again
            once its agent, Ray node and worker have started.

    A PC that is not training (still coming back from its last loss) is not picked:
    killing it again would measure start-up loops, not a pool losing workers."""

    def __init__(self, bench: Bench, mode: str, rate: float = 0.3, seed: int = 7):
        self.bench = bench
        self.mode = mode
        self.rate = rate
        self.rng = random.Random(seed)
        self.down: dict[str, int] = {}  # PC -> the round after which it lost power
        self.on_since: dict[str, float] = dict.fromkeys(POOL, -math.inf)  # PC -> powered on since (time.time())
        self.powered: dict[str, list[tuple[float, float]]] = {pc: [] for pc in POOL}  # closed on-intervals
        self.restarts: list[tuple[str, float]] = []  # (PC, when its agent started again)
        self.respawns: list[tuple[str, float]] = []  # (PC, when its worker was killed)
        self.out: set[str] = set()  # PCs lost and not seen training since
        self.log: list[tuple[int, str]] = []  # (last round seen before the loss, PC)
        self.last = 0

    def on_round(self, record: dict) -> None:
        round_no = record["round"]
        training = {pc_of(w["worker"]) for w in record["workers"]}
        self.out -= {pc for pc in self.out if pc in training and pc not in self.down}
        for r in range(self.last + 1, round_no + 1):
            for pc, when in list(self.down.items()):
                if r >= when + 2:
                    self.power_on(pc)
            up = [pc for pc in POOL if pc not in self.out and pc in training]
            if len(up) > 1 and self.rng.random() < self.rate:
                pc = self.rng.choice(up)
                if self.mode == "power":
                    self.powered[pc].append((self.on_since.pop(pc), time.time()))
                    self.bench.cluster.stop_agent(pc, signal.SIGKILL)
                    self.down[pc] = r
                else:
                    self.respawns.append((pc, time.time()))
                    self.bench.cluster.kill_training_worker(pc)
                self.out.add(pc)
                self.log.append((r, pc))
        self.last = round_no

    def power_on(self, pc: str) -> None:
        self.on_since[pc] = time.time()  # from its agent starting: its start-up counts against the pool
        self.restarts.append((pc, self.on_since[pc]))
        self.bench.join(pc)
        del self.down[pc]

    def on_intervals(self) -> dict[str, list[tuple[float, float]]]:
        """When each PC was powered on, up to now."""
        return {pc: self.powered[pc] + ([(self.on_since[pc], math.inf)] if pc in self.on_since else [])
                for pc in POOL}

    def finish(self) -> None:
        self.intervals = self.on_intervals()  # before the PCs still down come back for the next runs
        for pc in list(self.down):
            self.power_on(pc)
        for pc in POOL:  # the runs that follow need all four PCs
            self.bench.cluster.wait_for(lambda pc=pc: self.back(pc), 120, f"{pc} back")

    def back(self, pc: str) -> bool:
        """Alive, on its new agent if it was restarted (the last one's row says alive
        until the new agent takes the name over)."""
        node = self.bench.cluster.node(pc)
        return node is not None and node["state"] == "alive" and node["last_seen"] > self.on_since[pc]


def pc_of(worker: str) -> str:
    """The simulated PC behind a worker key such as "w2/cpu"."""
    return worker.split("/")[0]


def powered_solo(t0: float, t1: float, intervals: dict[str, list[tuple[float, float]]],
                 solo: dict[str, float]) -> float:
    """Tokens the PCs powered on between t0 and t1 would have trained alone: the
    integral of their summed solo speeds."""
    total = 0.0
    for pc, spans in intervals.items():
        for start, end in spans:
            total += solo[pc] * max(0.0, min(t1, end) - max(t0, start))
    return total


def churn_retained(rounds: list[dict], intervals: dict[str, list[tuple[float, float]]],
                   solo: dict[str, float]) -> float:
    """The pool's tokens over the rounds after the first, over what its powered-on
    PCs would have trained alone in those rounds' own time."""
    tokens = sum(r["tokens"] - p["tokens"] for p, r in zip(rounds, rounds[1:]))
    could = sum(powered_solo(r["t_wall"] - r["round_s"], r["t_wall"], intervals, solo) for r in rounds[1:])
    return tokens / could


def from_ready(intervals: dict[str, list[tuple[float, float]]], ready: dict[float, float]) -> dict:
    """The on-intervals with each restart's start moved to when its worker was ready
    (`ready`: restart time -> ready time): the PCs as if they started in no time."""
    return {pc: [(min(ready.get(start, start), end), end) for start, end in spans] for pc, spans in intervals.items()}


def first_contribution(rounds: list[dict], since: float, worker_prefix: str) -> float | None:
    """Seconds from `since` to the end of the first round a worker whose key starts
    with `worker_prefix` contributed to; None if none did before the run ended."""
    for r in rounds:
        if r["t_wall"] > since and any(w["worker"].startswith(worker_prefix) for w in r["workers"]):
            return r["t_wall"] - since
    return None


def rounds_out(rounds: list[dict], kills: list[tuple[int, str]]) -> list[int]:
    """For each loss: the rounds its PC did not train, from the round it was lost in
    to the first it trained in again (a run that ended first counts up to its end)."""
    trained = {r["round"]: {pc_of(w["worker"]) for w in r["workers"]} for r in rounds}
    last = rounds[-1]["round"]
    out = []
    for seen, pc in kills:
        back = next((n for n in range(seen + 2, last + 1) if pc in trained.get(n, ())), last + 1)
        out.append(back - (seen + 1))
    return out


def peer_run(bench: Bench, t1: float, target: float, cap_factor: float) -> dict:
    """Ray Train's TorchTrainer (DDP, gloo) with batch 12 per worker on the same PCs."""
    # The cluster's Ray requires its token, and Ray reads it from the environment on import.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=bench.cluster.token_file.read_text().strip())
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = bench.cfg
    max_steps = cfg.train.max_iters * cfg.train.batch_size // (cfg.train.batch_size * len(POOL))
    history_file = bench.cluster.state_dir / "peer-history.json"
    loop_config = {"config": cfg.to_dict(), "data": str(CORPUS), "max_steps": max_steps,
                   "cap_s": cap_factor * t1, "eval_every": max(1, max_steps // 40), "history": str(history_file)}
    ray.init(address=f"127.0.0.2:{bench.cluster.ray_port}", log_to_driver=False, logging_level="ERROR")
    try:
        trainer = TorchTrainer(
            _peer_loop, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=len(POOL), use_gpu=False, resources_per_worker={"CPU": 1},
                                         placement_strategy="STRICT_SPREAD"),
            run_config=RunConfig(storage_path=str(bench.cluster.state_dir / "ray-train"), name="peer"),
        )
        trainer.fit()
    finally:
        ray.shutdown()
    history = json.loads(history_file.read_text())
    # evaluate the snapshots offline, as for our pool
    hit = None
    for snap in history:
        load_flat(bench.model, np.load(snap["path"]))
        snap["val"] = evaluate(bench.model, bench.val, 12, torch.device("cpu"))
        if hit is None and snap["val"] <= target:
            hit = snap
    elapsed = history[-1]["elapsed_s"]
    tokens = history[-1]["tokens"]
    return {"tokens_per_s": tokens / elapsed, "elapsed_s": elapsed, "reached": hit is not None,
            "time_to_target_s": hit["elapsed_s"] if hit else None, "final_val": history[-1]["val"],
            "speedup": t1 / hit["elapsed_s"] if hit else None, "speedup_upper_bound": None if hit else t1 / elapsed}


def _peer_loop(loop_config: dict) -> None:
    import os

    import ray.train
    import ray.train.torch

    from jobs.dutycycle import DutyCycle
    from jobs.gpt.batches import BatchSampler
    from jobs.gpt.config import GPTConfig
    from jobs.gpt.data import default_cache_dir, prepare_data
    from jobs.gpt.diloco import flat_params
    from jobs.gpt.schedule import lr_at
    from jobs.gpt.train import build_optimizer, train_step

    cfg = GPTConfig.from_dict(loop_config["config"])
    t = cfg.train
    data = prepare_data(loop_config["data"], "char", cfg.model.block_size, default_cache_dir())
    torch.manual_seed(t.seed)
    model = GPT(replace(cfg.model, vocab_size=data.tokenizer.vocab_size))
    model = ray.train.torch.prepare_model(model)  # DistributedDataParallel over gloo
    optimizer = build_optimizer(model.module, cfg)
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    sampler = BatchSampler(data.train, cfg.model.block_size, t.batch_size, seed=t.seed + rank)
    throttle = DutyCycle.from_env()  # this node's --duty-cycle, as for our own workers
    sched = replace(t, max_iters=loop_config["max_steps"], lr_decay_iters=loop_config["max_steps"],
                    warmup_iters=max(1, t.warmup_iters * loop_config["max_steps"] // t.max_iters))
    out_dir = Path(tempfile.gettempdir()) / f"salvage-peer-{os.getpid()}"
    out_dir.mkdir(exist_ok=True)
    history = []
    saving = 0.0  # rank 0's snapshots for the offline evaluation are not training time
    # Start together: a rank that loaded its data first would otherwise count its wait
    # for the others as work (and rest for it under its duty cycle).
    torch.distributed.barrier()
    if throttle:
        throttle.start()
    start = time.perf_counter()
    for step in range(loop_config["max_steps"]):
        x, y = sampler.next()
        train_step(model, optimizer, [(x, y)], lr=lr_at(step, sched), grad_clip=t.grad_clip)
        if throttle:
            throttle.after_work()
        # Wall time since the start, waits included: a fast rank spends much of each
        # step waiting for the slowest one, in the gradient all-reduce or below.
        elapsed = time.perf_counter() - start - saving
        if rank == 0 and ((step + 1) % loop_config["eval_every"] == 0 or step + 1 == loop_config["max_steps"]):
            t0 = time.perf_counter()
            path = out_dir / f"step-{step + 1}.npy"
            np.save(path, flat_params(model.module))
            history.append({"step": step + 1, "elapsed_s": elapsed, "path": str(path),
                            "tokens": (step + 1) * world * t.batch_size * cfg.model.block_size})
            saving += time.perf_counter() - t0
        # Every rank must stop at the same step, or the others wait in all-reduce forever.
        over = torch.tensor([1.0 if elapsed > loop_config["cap_s"] else 0.0])
        torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)
        if over.item() > 0:
            break
    if rank == 0:
        Path(loop_config["history"]).write_text(json.dumps(history))
    ray.train.report({"steps": step + 1})


def steady_rate(rounds: list[dict]) -> float:
    """Training tokens/s over the rounds after the first: tokens over the rounds' own
    wall time. What happens between rounds (evaluation and checkpoints, the same
    eight per run whatever its length) is left out on both sides of eta, or a short
    solo run would be charged for evaluations that a long pool run spreads thin."""
    tokens = sum(r["tokens"] - p["tokens"] for p, r in zip(rounds, rounds[1:]))
    return tokens / sum(r["round_s"] for r in rounds[1:])


def compute_rate(rounds: list[dict], tokens_per_step: int) -> float:
    """What the pool's PCs computed, summed: each PC's tokens over its own time
    training in the rounds after the first (its duty-cycle rests between steps
    included; fetching the parameters and waiting for the others left out)."""
    tokens: dict[str, float] = {}
    busy: dict[str, float] = {}
    for r in rounds[1:]:
        for w in r["workers"]:
            n, pc = w["steps"] * tokens_per_step, pc_of(w["worker"])
            tokens[pc] = tokens.get(pc, 0) + n
            busy[pc] = busy.get(pc, 0.0) + n / max(w["tokens_per_s"], 1)
    return sum(tokens[k] / busy[k] for k in tokens)


def eta_parts(rounds: list[dict], tokens_per_step: int, sum_solo: float) -> dict:
    """eta's two factors (see the module's docstring); their product is eta."""
    rate, computing = steady_rate(rounds), compute_rate(rounds, tokens_per_step)
    return {"eta_compute": round(computing / sum_solo, 3), "eta_rounds": round(rate / computing, 3)}


def _kv(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="A tiny model and 400 iterations: checks the script.")
    ap.add_argument("--sync", default="17,42,88",
                    help="Sync intervals for the frontier (rounds as long as that many steps on the fastest PC).")
    ap.add_argument("--factor", default="1.2,1.3,1.5",
                    help="Token budget of each frontier run, as a multiple of the preset's (one per --sync).")
    ap.add_argument("--codec", default="fp16,int8,int4", help="Codec of each frontier run.")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--churn", default="worker,power",
                    help="Churn runs: worker (its process is killed), power (the whole PC), or none.")
    ap.add_argument("--peer-cap", type=float, default=1.5, help="Stop the peer after this many T1 of training.")
    ap.add_argument("--duty-scale", type=float, default=1.0,
                    help="Scale every PC's duty cycle (the pool asks for 0.75 x this of a core): the same "
                         "uneven pool, slower, sharing this machine's cores less.")
    args = ap.parse_args()
    syncs = [int(s) for s in args.sync.split(",")]
    factors = [float(f) for f in args.factor.split(",")]
    codecs = args.codec.split(",")
    if not (len(syncs) == len(factors) == len(codecs)):
        raise SystemExit("--sync, --factor and --codec need one value per frontier entry")
    churns = [m for m in args.churn.split(",") if m != "none"]
    if not 0 < args.duty_scale <= 1 / max(POOL.values()):
        raise SystemExit(f"--duty-scale: expected a factor that keeps every duty cycle in (0, 1], got {args.duty_scale}")
    POOL.update({pc: duty * args.duty_scale for pc, duty in POOL.items()})
    if set(churns) - {"worker", "power"}:
        raise SystemExit(f"--churn: expected worker, power or none, got {args.churn!r}")
    if not args.skip_peer:
        # The peer runs after the frontier: fail now, not twenty minutes in. Checked in a
        # child process, because importing Ray here would fix its auth settings too early.
        if subprocess.run([sys.executable, "-c", "import ray.train.torch"], capture_output=True).returncode:
            raise SystemExit("peer: Ray Train is not installed (pip install -e '.[bench]'), or pass --skip-peer")
    sets = QUICK if args.quick else []
    state = Path(tempfile.mkdtemp(prefix="salvage-bench-pool-"))
    bench = Bench(state, sets)
    out: dict = {"preset": "shakespeare-char-cpu" + (" (quick)" if args.quick else ""), "pool": POOL}

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally below: the cluster stops
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    try:
        bench.start()
        iters = bench.cfg.train.max_iters
        job = bench.solo_job("w1", iters, 20, "--pool-set", "keep_history=true")
        rounds = bench.wait(job)
        l_star = bench.val_loss(job, rounds[-1]["round"])
        t1, _ = bench.time_to(job, rounds, l_star)
        out.update(l_star=round(l_star, 4), t1_s=round(t1, 1))
        say(f"fastest alone: L* = {l_star:.4f} after {rounds[-1]['tokens']:,} tokens, T1 = {t1:.1f} s")
        solos = SoloSpeeds(bench)

        frontier = []
        for sync, factor, codec in zip(syncs, factors, codecs):
            run = bench.pool_run(sync, factor, codec)
            sum_solo = sum(solos.around_last_run().values())
            rs = run["rounds"]
            reach, final = bench.time_to(run["job"], rs, l_star)
            moved = rs[-1]["bytes_up"] + rs[-1]["bytes_down"]
            n_params = bench.model.num_params()
            ratio = allreduce_bytes(rs[-1]["tokens"], n_params, len(POOL), bench.tps) / moved
            rate = steady_rate(rs)
            entry = {"sync_steps": sync, "codec": codec, "token_factor": factor, "rounds": len(rs),
                     "bytes_ratio": round(ratio, 1), "speedup": round(t1 / reach, 3) if reach else 0.0,
                     "speedup_drift_adj": round(t1 * sum(solos.sets[0].values()) / sum_solo / reach, 3)
                     if reach else 0.0,
                     "reached": reach is not None, "final_val": round(final, 4), "eta": round(rate / sum_solo, 3),
                     **eta_parts(rs, bench.tps, sum_solo), "tokens_per_s": round(rate)}
            frontier.append(entry)
            say(f"pool sync {sync} ({codec}, {factor}x tokens): {entry}")
        out["frontier"] = frontier
        lan = [e for e in frontier if e["bytes_ratio"] >= 20]
        best = max(lan, key=lambda e: e["speedup"]) if lan else frontier[0]
        out["eta"] = best["eta"]  # the efficiency of the setting that gives `speedup`
        out["eta_compute"], out["eta_rounds"] = best["eta_compute"], best["eta_rounds"]
        out["speedup"] = best["speedup"] if lan else 0.0
        out["speedup_drift_adj"] = best["speedup_drift_adj"] if lan else 0.0
        out["speedup_at_400"] = max((e["speedup"] for e in frontier if e["bytes_ratio"] >= 400), default=0.0)

        if not args.skip_peer:
            peer = peer_run(bench, t1, l_star, args.peer_cap)
            sum_solo = sum(solos.around_last_run().values())
            out["peer_eta"] = round(peer["tokens_per_s"] / sum_solo, 3)
            out["peer_speedup"] = round(peer["speedup"], 3) if peer["speedup"] else None
            out["peer"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in peer.items()}
            say(f"peer (Ray Train DDP): {out['peer']}")
        for mode in churns:
            run = bench.pool_run(best["sync_steps"], best["token_factor"], best["codec"], churn=mode)
            solo = solos.around_last_run()
            sum_solo = sum(solo.values())
            rs = run["rounds"]
            reach, final = bench.time_to(run["job"], rs, l_star)
            key = "churn_speedup" if mode == "worker" else f"churn_{mode}_speedup"
            out[key] = round(t1 / reach, 3) if reach else 0.0
            lost = rounds_out(rs, run["kills"])
            churn = run["churn"]
            retained = churn_retained(rs, churn.intervals, solo)
            if mode == "power":
                back = [first_contribution(rs, t, f"{pc}/") for pc, t in churn.restarts]
                out["churn_power_retained"] = round(retained, 3)
                # The same with each PC counted from its worker being ready: the loss left
                # is the rounds' and the shared cores' (eta_compute); the rest is starting
                # an agent, a Ray node and a worker (torch) beside the pool.
                joins = bench.joins(run["job"])
                ready = {t: at for pc, t in churn.restarts
                         if (at := next((at for at, key in joins if at > t and key.startswith(f"{pc}/")), None))}
                out["start_s"] = round(float(np.median([r - t for t, r in ready.items()])), 1) if ready else None
                out["churn_power_retained_after_start"] = round(
                    churn_retained(rs, from_ready(churn.intervals, ready), solo), 3)
                out["rejoin_s"] = round(float(np.median([b for b in back if b is not None])), 1) \
                    if any(b is not None for b in back) else None
            else:
                back = [first_contribution(rs, t, f"{pc}/") for pc, t in churn.respawns]
                out["churn_retained"] = round(retained, 3)
                out["respawn_s"] = round(float(np.median([b for b in back if b is not None])), 1) \
                    if any(b is not None for b in back) else None
            # eta_compute falls by what new workers' starts take from the others' cores,
            # eta_rounds by the rounds lost PCs spend out.
            out[f"churn_{mode}"] = {"sync_steps": best["sync_steps"], "final_val": round(final, 4),
                                    **eta_parts(rs, bench.tps, sum_solo), "retained": round(retained, 3),
                                    "back_s": [None if b is None else round(b, 1) for b in back],
                                    "kills": run["kills"], "rounds": len(rs), "reached": reach is not None,
                                    "rounds_out": lost, "mean_rounds_out": round(float(np.mean(lost)), 2)
                                    if lost else None}
            say(f"churn ({mode}): {out[f'churn_{mode}']} speedup {out[key]}")

        out["solo_tokens_per_s"] = [{k: round(v) for k, v in one.items()} for one in solos.sets]
        out["solo_drift"] = round(solos.drift(), 3)
    finally:
        bench.cluster.down()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
