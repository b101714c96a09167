"""Training jobs' records: the `train_jobs` and `train_log` tables.

A job is a dict of its row's columns; `log` lines and `progress` entries are
what `salvage train logs` shows."""
from __future__ import annotations

import json
import time

from cluster.head.db import Database, earlier_reply, remember_reply

TERMINAL = ("done", "failed", "stopped")


class JobRecords:
    def __init__(self, db: Database):
        self.db = db

    def get(self, job_id: int) -> dict | None:
        with self.db.lock:
            cur = self.db.conn.execute("SELECT * FROM train_jobs WHERE id = ?", (job_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        return None if row is None else dict(zip(names, row, strict=True))

    def all(self) -> list[dict]:
        with self.db.lock:
            cur = self.db.conn.execute("SELECT * FROM train_jobs ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def add(self, preset: str, config: dict, data: str | None, pool: dict | None,
            key: str | None = None) -> tuple[int, bool]:
        """Queue a job; returns (its id, whether it is new). A submission whose
        idempotency key was seen before gets that job back, and nothing is added."""
        with self.db.lock:
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                earlier = earlier_reply(self.db.conn, key, "train")
                if earlier is None:
                    job_id = self.db.conn.execute(
                        "INSERT INTO train_jobs (state, preset, config_json, data, created_at, pool_json) "
                        "VALUES ('queued', ?, ?, ?, ?, ?)",
                        (preset, json.dumps(config), data, time.time(),
                         None if pool is None else json.dumps(pool))).lastrowid
                    remember_reply(self.db.conn, key, "train", {"job": job_id})
                self.db.conn.execute("COMMIT")
            except BaseException:
                self.db.conn.execute("ROLLBACK")
                raise
        return (job_id, True) if earlier is None else (earlier["job"], False)

    def set(self, job_id: int, **fields) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.db.lock:
            self.db.conn.execute(f"UPDATE train_jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def log(self, job_id: int, kind: str, data) -> None:
        """One line ("log") or figures ("progress") in the job's log."""
        with self.db.lock:
            self.db.conn.execute("INSERT INTO train_log (job_id, t, kind, data_json) VALUES (?, ?, ?, ?)",
                                 (job_id, time.time(), kind, json.dumps(data)))

    def entries(self, job_id: int, since: int, limit: int = 5000) -> list[dict]:
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT seq, t, kind, data_json FROM train_log WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, since, limit)).fetchall()
        return [{"seq": s, "t": t, "kind": k, "data": json.loads(d)} for s, t, k, d in rows]

    def merge_progress(self, job_id: int, progress: dict) -> None:
        """The job's latest figures, updated with these."""
        with self.db.lock:
            row = self.db.conn.execute("SELECT progress_json FROM train_jobs WHERE id = ?", (job_id,)).fetchone()
            merged = json.loads((row and row[0]) or "{}")
            merged.update(progress)
            self.db.conn.execute("UPDATE train_jobs SET progress_json = ?, progress_at = ? WHERE id = ?",
                                 (json.dumps(merged), time.time(), job_id))

    def requeue_running(self) -> None:
        """At the head's start no task is in flight: what ran runs again from its checkpoint."""
        with self.db.lock:
            self.db.conn.execute("UPDATE train_jobs SET state = 'queued', host = NULL WHERE state = 'running'")


def max_iters(job: dict) -> int:
    """Iterations of the job's batch size it runs for (a pool counts all workers' steps)."""
    iters = json.loads(job["config_json"])["train"]["max_iters"]
    if job["pool_json"]:
        iters = int(iters * json.loads(job["pool_json"])["token_factor"])
    return iters
