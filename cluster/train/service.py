"""Training jobs on the head: the API, placement on the fastest fitting device,
progress and checkpoints from the worker, and requeue when a node dies."""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.head.files import fsync_dir
from cluster.head.hosts import HostRecords
from cluster.head.http import ApiError, Route, submission_key
from cluster.head.metrics import PoolMetrics
from cluster.head.raynodes import RayNodes
from jobs.gpt.config import ConfigError, GPTConfig
from workers.tasks.train_job import run_train_job

from .options import PoolOptionError, PoolOptions
from .placement import fastest, gpt_bytes_needed, training_slots
from .records import TERMINAL, JobRecords, max_iters
from .rounds import PoolRun

MAX_CHECKPOINT_BYTES = 8 * 2**30


def requeue_reason(job: dict, alive: set[str], in_flight: set[int], pools: set[int]) -> str | None:
    """Why a running job must go back to the queue, or None if it runs on.

    `alive`: hosts alive now; `in_flight`: single jobs whose Ray task the head
    holds; `pools`: pool jobs whose round loop runs."""
    if job["state"] != "running":
        return None
    if job["pool_json"]:
        return None if job["id"] in pools else "its round loop ended"
    if job["host"] not in alive:
        return f"host {job['host']} is gone"
    if job["id"] not in in_flight:
        return "its task was lost"
    return None


class TrainJobs:
    """`head` is how a job's task reaches the API: its `address`, the `token`, and
    the `ca` (PEM) of a head that speaks TLS."""

    def __init__(self, records: JobRecords, hosts: HostRecords, nodes: RayNodes, root: Path,
                 head: dict, pool_metrics: PoolMetrics, log: Callable[[str], None],
                 stopping: threading.Event, on_failure: Callable[[str, str], None] = lambda host, why: None):
        self.on_failure = on_failure  # a job's task failed on a host (not its node dying)
        self.records = records
        self.hosts = hosts
        self.nodes = nodes
        self.root = root
        self.head = head
        self.pool_metrics = pool_metrics
        self.log = log
        self.stopping = stopping
        self.refs: dict[int, object] = {}  # job id -> Ray ObjectRef of its running task
        self.node_of_job: dict[int, str] = {}  # job id -> the Ray node it runs on
        self.pools: dict[int, PoolRun] = {}  # multi-worker jobs, each driven by its own thread
        # The head's loop and `train submit` both place queued jobs; one at a time,
        # or both see the same queued job and start it twice.
        self.placing = threading.Lock()
        self.remote_job = ray.remote(run_train_job)
        self.root.mkdir(exist_ok=True)
        for stale in self.root.glob("train-*/.*.tmp*"):  # uploads and saves a crash cut short
            stale.unlink(missing_ok=True)
        records.requeue_running()

    def routes(self) -> dict:
        return {
            ("POST", "/api/train/submit"): Route(self.api_submit),
            ("POST", "/api/train/list"): Route(self.api_list),
            ("POST", "/api/train/logs"): Route(self.api_logs),
            ("POST", "/api/train/stop"): Route(self.api_stop),
            ("POST", "/api/train/progress"): Route(self.api_progress),
            ("POST", "/api/train/checkpoint"): Route(self.api_put_checkpoint, kind="stream"),
            ("GET", "/api/train/checkpoint"): Route(self.api_get_checkpoint, kind="stream"),
        }

    def checkpoint_path(self, job_id: int) -> Path:
        return self.root / f"train-{job_id}" / "ckpt.pt"

    def _job(self, job_id) -> dict:
        if not isinstance(job_id, int):
            raise ApiError(400, f"job: expected a job id (integer), got {job_id!r}")
        job = self.records.get(job_id)
        if job is None:
            raise ApiError(404, f"job: no training job {job_id}")
        return job

    def _note(self, job_id: int, text: str) -> None:
        self.records.log(job_id, "log", text)

    # --- API ---
    def api_submit(self, body: dict) -> dict:
        """Everything is checked and the config built before anything is stored: a
        bad submission is a 400 and leaves no trace."""
        config = body.get("config")
        if not isinstance(config, dict) or "model" not in config or "train" not in config:
            raise ApiError(400, "config: expected the job's full config (model and train sections)")
        try:
            config = GPTConfig.from_dict(config).to_dict()
        except ConfigError as err:
            raise ApiError(400, str(err).splitlines()[0]) from None
        data = body.get("data")
        if data is not None and (not isinstance(data, str) or not 0 < len(data) <= 4096 or "\0" in data):
            raise ApiError(400, "data: expected a corpus name or path")
        preset = body.get("preset", "")
        if not isinstance(preset, str) or len(preset) > 100:
            raise ApiError(400, "preset: expected the preset's name")
        pool = body.get("pool")
        if pool is not None:
            if not isinstance(pool, dict):
                raise ApiError(400, "pool: expected the pool options as a table")
            try:
                pool = PoolOptions.from_dict(pool).__dict__
            except PoolOptionError as err:
                raise ApiError(400, str(err)) from None
        job_id, new = self.records.add(preset, config, data, pool, submission_key(body))
        if not new:
            return {"job": job_id}  # a retry of a submission already taken
        workers = "" if pool is None else f", workers {pool['workers'] or 'all'}"
        self._note(job_id, f"submitted (preset {preset}, data {data or 'default'}{workers})")
        with self.placing:
            self.place()
        return {"job": job_id}

    def api_list(self, _body: dict) -> dict:
        out = []
        for j in self.records.all():
            progress = json.loads(j["progress_json"] or "{}")
            out.append({"id": j["id"], "state": j["state"], "preset": j["preset"], "host": j["host"],
                        "attempt": j["attempt"], "iter": progress.get("iter"),
                        "max_iters": max_iters(j), "pool": bool(j["pool_json"]),
                        "round": progress.get("round"), "workers": len(progress.get("workers") or ()) or None,
                        "train_loss": progress.get("train_loss"), "val_loss": progress.get("val_loss"),
                        "tokens_per_s": progress.get("tokens_per_s"), "error": j["error"],
                        "created_at": j["created_at"], "has_checkpoint": self.checkpoint_path(j["id"]).exists()})
        return {"jobs": out}

    def api_logs(self, body: dict) -> dict:
        job = self._job(body.get("job"))
        entries = self.records.entries(job["id"], int(body.get("since", 0)))
        return {"state": job["state"], "error": job["error"], "host": job["host"],
                "max_iters": max_iters(job), "entries": entries}

    def api_stop(self, body: dict) -> dict:
        job = self._job(body.get("job"))
        if job["state"] in TERMINAL:
            return {"state": job["state"]}
        if job["state"] == "queued":
            self.records.set(job["id"], state="stopped", finished_at=time.time())
            self._note(job["id"], "stopped before it started")
            return {"state": "stopped"}
        self.records.set(job["id"], stop_requested=1)
        self._note(job["id"], "stop requested: checkpointing")
        return {"state": "stopping"}

    def api_progress(self, body: dict) -> dict:
        job = self._job(body.get("job"))
        if body.get("attempt") != job["attempt"] or job["state"] != "running":
            return {"stop": True}  # a stale attempt (the job moved on): it must not write here
        last = None
        for item in body.get("items") or []:
            if not isinstance(item, dict) or item.get("kind") not in ("progress", "log"):
                continue
            self.records.log(job["id"], item["kind"], item.get("data"))
            if item["kind"] == "progress" and isinstance(item.get("data"), dict):
                last = item["data"]
        if last is not None:
            self.records.merge_progress(job["id"], last)
        return {"stop": bool(job["stop_requested"])}

    def api_put_checkpoint(self, query: dict, rfile, length: int) -> dict:
        job = self._job(_int(query.get("job"), "job"))
        if _int(query.get("attempt"), "attempt") != job["attempt"]:
            raise ApiError(409, "attempt: this attempt of the job is stale")
        if not 0 < length <= MAX_CHECKPOINT_BYTES:
            raise ApiError(413, f"checkpoint: expected 1 to {MAX_CHECKPOINT_BYTES} bytes, got {length}")
        dest = self.checkpoint_path(job["id"])
        dest.parent.mkdir(exist_ok=True)
        # A name of its own: two uploads of one job (a retry beside a slow first try) never mix.
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=".ckpt.", suffix=".tmp")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = length
                while remaining:
                    chunk = rfile.read(min(remaining, 2**20))
                    if not chunk:
                        raise ApiError(400, "checkpoint: upload ended early")
                    out.write(chunk)
                    remaining -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)  # the last good checkpoint stays whole until this moment
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(dest.parent)
        self.records.set(job["id"], checkpoint=str(dest))
        return {"ok": True}

    def api_get_checkpoint(self, query: dict, _rfile, _length: int):
        job = self._job(_int(query.get("job"), "job"))
        path = self.checkpoint_path(job["id"])
        if not path.exists():
            raise ApiError(404, f"job: training job {job['id']} has no checkpoint yet")
        return path

    # --- the loop ---
    def step(self) -> None:
        with self.placing:
            self.collect()
            self.place()

    def collect(self) -> None:
        if self.refs:
            ready, _ = ray.wait(list(self.refs.values()), num_returns=len(self.refs), timeout=0)
            for job_id, ref in list(self.refs.items()):
                if ref in ready:
                    del self.refs[job_id]
                    self._finish(job_id, ref)
        alive = {r.name for r in self.hosts.alive()}
        for job in self.records.all():
            why = requeue_reason(job, alive, set(self.refs), set(self.pools))
            if why is None:
                continue
            ref = self.refs.pop(job["id"], None)
            if ref is not None:
                ray.cancel(ref, force=True)
            self._requeue(job, why)

    def _finish(self, job_id: int, ref) -> None:
        job = self.records.get(job_id)
        node = self.node_of_job.pop(job_id, None)
        try:
            result = ray.get(ref)
        except (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError) as err:
            self.nodes.mark_dead(node)
            self._requeue(job, f"its node died ({type(err).__name__})")
            return
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.TaskCancelledError,
                ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError) as err:
            self._requeue(job, f"its worker died ({type(err).__name__})")
            if job["host"] and not isinstance(err, ray.exceptions.TaskCancelledError):
                self.on_failure(job["host"], f"training worker {type(err).__name__}")
            return
        except ray.exceptions.RayTaskError as err:
            cause = str(err.cause if getattr(err, "cause", None) else err).strip().splitlines()[-1]
            self.records.set(job_id, state="failed", error=f"internal: {cause}", finished_at=time.time())
            self._note(job_id, f"failed: {cause}")
            return
        if "retry" in result:
            self._requeue(job, result["retry"])
        elif "error" in result:
            self.records.set(job_id, state="failed", error=result["error"], finished_at=time.time())
            self._note(job_id, f"failed: {result['error']}")
        else:
            state = "stopped" if result.get("stopped") else "done"
            self.records.set(job_id, state=state, summary_json=json.dumps(result), finished_at=time.time())
            self._note(job_id, f"{state} at iter {result.get('iters')}: val loss {result.get('val_loss')}, "
                               f"{result.get('tokens_per_s') or 0:.0f} tokens/s")

    def _requeue(self, job: dict, why: str) -> None:
        self.records.set(job["id"], state="queued", host=None)
        self._note(job["id"], f"requeued: {why}; it resumes from its last checkpoint")
        self.log(f"train job {job['id']} requeued: {why}")

    def running_on(self) -> dict[str, int]:
        """Training workers per host: single-worker jobs and pool members."""
        counts: dict[str, int] = {}
        for job in self.records.all():
            if job["state"] == "running" and not job["pool_json"]:
                counts[job["host"]] = counts.get(job["host"], 0) + 1
        for pool in list(self.pools.values()):
            for host, n in pool.busy_devices().items():
                counts[host] = counts.get(host, 0) + n
        return counts

    def place(self) -> None:
        """Start every queued job that has somewhere to run: a single job on the
        fastest free device whose memory fits its model (see `placement`), a pool
        job's round loop (which finds its own devices). A job that fits nowhere
        waits in the queue; `train logs` shows it queued."""
        queued = [j for j in self.records.all() if j["state"] == "queued"]
        if not queued:
            return
        busy = self.running_on()
        for job in queued:
            if job["stop_requested"]:
                self.records.set(job["id"], state="stopped", finished_at=time.time())
                continue
            if job["pool_json"]:
                self._start_pool(job)
                continue
            config = json.loads(job["config_json"])
            need = gpt_bytes_needed(config["model"])
            slots, nodes = [], {}
            for row in self.hosts.alive():
                nodes[row.name] = self.nodes.alive(row.ray_node_id)
                if nodes[row.name] is not None:  # paused, drained or unhealthy devices take no new job
                    slots += [s for s in training_slots(row.info, busy.get(row.name, 0), need)
                              if row.blocked(s.gpu) is None]
            slot = fastest(slots)
            if slot is None:
                continue
            node = nodes[slot.host]
            attempt = job["attempt"] + 1
            remote = self.remote_job.options(
                num_cpus=1, num_gpus=0 if slot.gpu is None else 1, max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            device = "cpu" if slot.gpu is None else f"gpu{slot.gpu}"
            self.refs[job["id"]] = remote.remote(job["id"], attempt, config, job["data"], self.head, device)
            self.node_of_job[job["id"]] = node["NodeID"]
            self.records.set(job["id"], state="running", host=slot.host, attempt=attempt,
                             started_at=job["started_at"] or time.time())
            device = "CPU" if slot.gpu is None else f"GPU {slot.gpu}"  # as people read it
            self._note(job["id"], f"placed on {slot.host} ({device}, {slot.speed_gflops:.0f} GFLOP/s), "
                                  f"attempt {attempt}")
            busy[slot.host] = busy.get(slot.host, 0) + 1

    def _start_pool(self, job: dict) -> None:
        if job["id"] in self.pools:
            return
        attempt = job["attempt"] + 1
        run = PoolRun(job, attempt, self.records, self.hosts, self.nodes, busy=self.running_on,
                      job_dir=self.root / f"train-{job['id']}", export_path=self.checkpoint_path(job["id"]),
                      metrics=self.pool_metrics, stopping=self.stopping,
                      on_end=lambda: self.pools.pop(job["id"], None))
        self.pools[job["id"]] = run
        self.records.set(job["id"], state="running", host="pool", attempt=attempt,
                         started_at=job["started_at"] or time.time())
        run.start()


def _int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name}: expected an integer, got {value!r}") from None
