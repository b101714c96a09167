"""Training jobs on the coordinator: durable records, placement on the
fastest fitting device, progress and checkpoints from the worker, requeue
when a node dies."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .api import ApiError
from .placement import fastest, gpt_bytes_needed, training_slots
from .trainpool import PoolOptionError, PoolOptions, PoolRun

if TYPE_CHECKING:
    from .coordinator import Coordinator

TERMINAL = ("done", "failed", "stopped")
MAX_CHECKPOINT_BYTES = 8 * 2**30


class TrainJobs:
    def __init__(self, coordinator: "Coordinator"):
        self.c = coordinator
        self.db = coordinator.db
        self.refs: dict[int, object] = {}  # job id -> Ray ObjectRef of its running task
        self.node_of_job: dict[int, str] = {}  # job id -> the Ray node it runs on
        self.pools: dict[int, PoolRun] = {}  # multi-worker jobs, each driven by its own thread
        # The head's loop and `train submit` both place queued jobs; one at a time,
        # or both see the same queued job and start it twice.
        self.placing = threading.Lock()
        self.root = coordinator.state.path / "jobs"
        self.root.mkdir(exist_ok=True)
        # A restarted head has no tasks in flight: what ran is run again from its checkpoint.
        with self.db.lock:
            self.db.conn.execute("UPDATE train_jobs SET state = 'queued', host = NULL WHERE state = 'running'")

    def routes(self) -> dict:
        return {
            ("POST", "/api/train/submit"): self.api_submit,
            ("POST", "/api/train/list"): self.api_list,
            ("POST", "/api/train/logs"): self.api_logs,
            ("POST", "/api/train/stop"): self.api_stop,
            ("POST", "/api/train/progress"): self.api_progress,
        }

    def stream_routes(self) -> dict:
        return {("POST", "/api/train/checkpoint"): self.api_put_checkpoint,
                ("GET", "/api/train/checkpoint"): self.api_get_checkpoint}

    def checkpoint_path(self, job_id: int) -> Path:
        return self.root / f"train-{job_id}" / "ckpt.pt"

    # --- records ---
    def _job(self, job_id) -> dict:
        if not isinstance(job_id, int):
            raise ApiError(400, f"job: expected a job id (integer), got {job_id!r}")
        with self.db.lock:
            cur = self.db.conn.execute("SELECT * FROM train_jobs WHERE id = ?", (job_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        if row is None:
            raise ApiError(404, f"job: no training job {job_id}")
        return dict(zip(names, row))

    def jobs(self) -> list[dict]:
        with self.db.lock:
            cur = self.db.conn.execute("SELECT * FROM train_jobs ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def _log(self, job_id: int, kind: str, data) -> None:
        with self.db.lock:
            self.db.conn.execute("INSERT INTO train_log (job_id, t, kind, data_json) VALUES (?, ?, ?, ?)",
                                 (job_id, time.time(), kind, json.dumps(data)))

    def _set(self, job_id: int, **fields) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.db.lock:
            self.db.conn.execute(f"UPDATE train_jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    # --- API ---
    def api_submit(self, body: dict) -> dict:
        config = body.get("config")
        if not isinstance(config, dict) or "model" not in config or "train" not in config:
            raise ApiError(400, "config: expected the job's full config (model and train sections)")
        data = body.get("data")
        if data is not None and not isinstance(data, str):
            raise ApiError(400, f"data: expected a corpus name or path, got {data!r}")
        pool = body.get("pool")
        if pool is not None:
            if not isinstance(pool, dict):
                raise ApiError(400, f"pool: expected the pool options as a table, got {pool!r}")
            try:
                pool = PoolOptions.from_dict(pool).__dict__
            except PoolOptionError as err:
                raise ApiError(400, str(err)) from None
        with self.db.lock:
            cur = self.db.conn.execute(
                "INSERT INTO train_jobs (state, preset, config_json, data, created_at, pool_json) "
                "VALUES ('queued', ?, ?, ?, ?, ?)",
                (str(body.get("preset", "")), json.dumps(config), data, time.time(),
                 None if pool is None else json.dumps(pool)))
        job_id = cur.lastrowid
        workers = "" if pool is None else f", workers {pool['workers'] or 'all'}"
        self._log(job_id, "log", f"submitted (preset {body.get('preset')}, data {data or 'default'}{workers})")
        with self.placing:
            self.place()
        return {"job": job_id}

    def api_list(self, _body: dict) -> dict:
        out = []
        for j in self.jobs():
            progress = json.loads(j["progress_json"] or "{}")
            out.append({"id": j["id"], "state": j["state"], "preset": j["preset"], "host": j["host"],
                        "attempt": j["attempt"], "iter": progress.get("iter"),
                        "max_iters": self.max_iters(j), "pool": bool(j["pool_json"]),
                        "round": progress.get("round"), "workers": len(progress.get("workers") or ()) or None,
                        "train_loss": progress.get("train_loss"), "val_loss": progress.get("val_loss"),
                        "tokens_per_s": progress.get("tokens_per_s"), "error": j["error"],
                        "created_at": j["created_at"], "has_checkpoint": self.checkpoint_path(j["id"]).exists()})
        return {"jobs": out}

    def api_logs(self, body: dict) -> dict:
        job = self._job(body.get("job"))
        since = body.get("since", 0)
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT seq, t, kind, data_json FROM train_log WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT 5000",
                (job["id"], int(since))).fetchall()
        return {"state": job["state"], "error": job["error"], "host": job["host"],
                "max_iters": self.max_iters(job),
                "entries": [{"seq": s, "t": t, "kind": k, "data": json.loads(d)} for s, t, k, d in rows]}

    def api_stop(self, body: dict) -> dict:
        job = self._job(body.get("job"))
        if job["state"] in TERMINAL:
            return {"state": job["state"]}
        if job["state"] == "queued":
            self._set(job["id"], state="stopped", finished_at=time.time())
            self._log(job["id"], "log", "stopped before it started")
            return {"state": "stopped"}
        self._set(job["id"], stop_requested=1)
        self._log(job["id"], "log", "stop requested: checkpointing")
        return {"state": "stopping"}

    def max_iters(self, job: dict) -> int:
        """Iterations of the job's batch size it runs for (a pool counts all workers' steps)."""
        iters = json.loads(job["config_json"])["train"]["max_iters"]
        if job["pool_json"]:
            iters = int(iters * json.loads(job["pool_json"])["token_factor"])
        return iters

    def stop_requested(self, job_id: int) -> bool:
        return bool(self._job(job_id)["stop_requested"])

    def merge_progress(self, job_id: int, progress: dict) -> None:
        job = self._job(job_id)
        merged = json.loads(job["progress_json"] or "{}")
        merged.update(progress)
        self._set(job_id, progress_json=json.dumps(merged), progress_at=time.time())

    def pool_ended(self, job_id: int) -> None:
        self.pools.pop(job_id, None)

    def api_progress(self, body: dict) -> dict:
        job = self._job(body.get("job"))
        if body.get("attempt") != job["attempt"] or job["state"] != "running":
            return {"stop": True}  # a stale attempt (the job moved on): it must not write here
        items = body.get("items") or []
        last = None
        for item in items:
            if not isinstance(item, dict) or item.get("kind") not in ("progress", "log"):
                continue
            self._log(job["id"], item["kind"], item.get("data"))
            if item["kind"] == "progress" and isinstance(item.get("data"), dict):
                last = item["data"]
        if last is not None:
            merged = json.loads(job["progress_json"] or "{}")
            merged.update(last)
            self._set(job["id"], progress_json=json.dumps(merged), progress_at=time.time())
        return {"stop": bool(job["stop_requested"])}

    def api_put_checkpoint(self, query: dict, rfile, length: int) -> dict:
        job = self._job(_int(query.get("job"), "job"))
        if _int(query.get("attempt"), "attempt") != job["attempt"]:
            raise ApiError(409, "attempt: this attempt of the job is stale")
        if not 0 < length <= MAX_CHECKPOINT_BYTES:
            raise ApiError(413, f"checkpoint: expected 1 to {MAX_CHECKPOINT_BYTES} bytes, got {length}")
        dest = self.checkpoint_path(job["id"])
        dest.parent.mkdir(exist_ok=True)
        tmp = dest.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as out:
            remaining = length
            while remaining:
                chunk = rfile.read(min(remaining, 2**20))
                if not chunk:
                    tmp.unlink(missing_ok=True)
                    raise ApiError(400, "checkpoint: upload ended early")
                out.write(chunk)
                remaining -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)  # the last good checkpoint stays whole until this moment
        self._set(job["id"], checkpoint=str(dest))
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
        import ray

        if self.refs:
            ready, _ = ray.wait(list(self.refs.values()), num_returns=len(self.refs), timeout=0)
            for job_id, ref in list(self.refs.items()):
                if ref in ready:
                    del self.refs[job_id]
                    self._finish(job_id, ref)
        alive = {r.name for r in self.db.hosts() if r.state == "alive"}
        for job in self.jobs():
            if job["state"] != "running":
                continue
            if job["pool_json"]:
                if job["id"] not in self.pools:
                    self._requeue(job, "its round loop ended")
                continue
            if job["host"] not in alive:
                ref = self.refs.pop(job["id"], None)
                if ref is not None:
                    ray.cancel(ref, force=True)
                self._requeue(job, f"host {job['host']} is gone")
            elif job["id"] not in self.refs:
                self._requeue(job, "its task was lost")

    def _finish(self, job_id: int, ref) -> None:
        import ray

        job = self._job(job_id)
        node = self.node_of_job.pop(job_id, None)
        try:
            result = ray.get(ref)
        except (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError) as err:
            self.c.dead_nodes.add(node)
            self._requeue(job, f"its node died ({type(err).__name__})")
            return
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.TaskCancelledError,
                ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError) as err:
            self._requeue(job, f"its worker died ({type(err).__name__})")
            return
        except ray.exceptions.RayTaskError as err:
            cause = str(err.cause if getattr(err, "cause", None) else err).strip().splitlines()[-1]
            self._set(job_id, state="failed", error=f"internal: {cause}", finished_at=time.time())
            self._log(job_id, "log", f"failed: {cause}")
            return
        if "error" in result:
            self._set(job_id, state="failed", error=result["error"], finished_at=time.time())
            self._log(job_id, "log", f"failed: {result['error']}")
        else:
            state = "stopped" if result.get("stopped") else "done"
            self._set(job_id, state=state, summary_json=json.dumps(result), finished_at=time.time())
            self._log(job_id, "log", f"{state} at iter {result.get('iters')}: val loss {result.get('val_loss')}, "
                                     f"{result.get('tokens_per_s') or 0:.0f} tokens/s")

    def _requeue(self, job: dict, why: str) -> None:
        self._set(job["id"], state="queued", host=None)
        self._log(job["id"], "log", f"requeued: {why}; it resumes from its last checkpoint")
        self.c.log(f"train job {job['id']} requeued: {why}")

    def running_on(self) -> dict[str, int]:
        """Training workers per host: single-worker jobs and pool members."""
        counts: dict[str, int] = {}
        for job in self.jobs():
            if job["state"] == "running" and not job["pool_json"]:
                counts[job["host"]] = counts.get(job["host"], 0) + 1
        for pool in list(self.pools.values()):
            for host, n in pool.busy_devices().items():
                counts[host] = counts.get(host, 0) + n
        return counts

    def place(self) -> None:
        queued = [j for j in self.jobs() if j["state"] == "queued"]
        if not queued:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        busy = self.running_on()
        for job in queued:
            if job["stop_requested"]:
                self._set(job["id"], state="stopped", finished_at=time.time())
                continue
            if job["pool_json"]:
                self._start_pool(job)
                continue
            config = json.loads(job["config_json"])
            need = gpt_bytes_needed(config["model"])
            slots = []
            for row in self.db.hosts():
                node = self.c.node_of(row.name)
                if row.state == "alive" and node is not None:
                    slots += training_slots(row.info, busy.get(row.name, 0), need)
            slot = fastest(slots)
            if slot is None:
                continue  # waits for a PC that fits; `train logs` shows it queued
            node = self.c.node_of(slot.host)
            attempt = job["attempt"] + 1
            remote = self.c.remote_train_job.options(
                num_cpus=1, num_gpus=0 if slot.gpu is None else 1, max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            self.refs[job["id"]] = remote.remote(job["id"], attempt, config, job["data"],
                                                 self.c.config.api_address, self.c.token)
            self.node_of_job[job["id"]] = node["NodeID"]
            self._set(job["id"], state="running", host=slot.host, attempt=attempt,
                      started_at=job["started_at"] or time.time())
            device = "CPU" if slot.gpu is None else f"GPU {slot.gpu}"
            self._log(job["id"], "log", f"placed on {slot.host} ({device}, {slot.speed_gflops:.0f} GFLOP/s), "
                                        f"attempt {attempt}")
            busy[slot.host] = busy.get(slot.host, 0) + 1

    def _start_pool(self, job: dict) -> None:
        if job["id"] in self.pools:
            return
        attempt = job["attempt"] + 1
        run = PoolRun(self, job, attempt)
        self.pools[job["id"]] = run
        self._set(job["id"], state="running", host="pool", attempt=attempt, started_at=job["started_at"] or time.time())
        run.start()


def _int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name}: expected an integer, got {value!r}") from None
