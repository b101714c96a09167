"""The coordinator's durable state: one SQLite file (WAL) in the state dir."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from workers.records import HostInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('alive', 'lost', 'left')),
    info_json TEXT NOT NULL,
    speed_gflops REAL NOT NULL,
    cpu_only INTEGER NOT NULL,
    metrics_addr TEXT,
    ray_node_id TEXT,
    lost_gpus TEXT NOT NULL DEFAULT '[]',
    joined_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS train_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'stopped')),
    preset TEXT NOT NULL,
    config_json TEXT NOT NULL,
    data TEXT,
    host TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    summary_json TEXT,
    progress_json TEXT,
    progress_at REAL,
    checkpoint TEXT,
    pool_json TEXT  -- NULL: a single-worker job; else its PoolOptions
);
CREATE TABLE IF NOT EXISTS train_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES train_jobs(id),
    t REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('progress', 'log')),
    data_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS train_log_job ON train_log(job_id, seq);
"""


@dataclass
class HostRow:
    name: str
    agent_id: str
    state: str
    info: HostInfo
    metrics_addr: str | None
    ray_node_id: str | None
    lost_gpus: list[int]
    joined_at: float
    last_seen: float


class Database:
    """A single connection shared by the coordinator's threads, behind a lock."""

    def __init__(self, path: Path):
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.lock = threading.RLock()
        with self.lock:
            self.conn.executescript(SCHEMA)
            columns = {row[1] for row in self.conn.execute("PRAGMA table_info(train_jobs)")}
            if "pool_json" not in columns:  # state dirs from before multi-worker jobs
                self.conn.execute("ALTER TABLE train_jobs ADD COLUMN pool_json TEXT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # --- hosts ---
    def host(self, name: str) -> HostRow | None:
        with self.lock:
            row = self.conn.execute("SELECT * FROM hosts WHERE name = ?", (name,)).fetchone()
        return _host_row(row) if row else None

    def hosts(self) -> list[HostRow]:
        with self.lock:
            rows = self.conn.execute("SELECT * FROM hosts ORDER BY name").fetchall()
        return [_host_row(r) for r in rows]

    def upsert_host(self, info: HostInfo, agent_id: str, metrics_addr: str | None,
                    ray_node_id: str | None) -> None:
        now = time.time()
        with self.lock:
            self.conn.execute(
                """INSERT INTO hosts (name, agent_id, state, info_json, speed_gflops, cpu_only,
                                      metrics_addr, ray_node_id, joined_at, last_seen)
                   VALUES (?, ?, 'alive', ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET
                     agent_id=excluded.agent_id, state='alive', info_json=excluded.info_json,
                     speed_gflops=excluded.speed_gflops, cpu_only=excluded.cpu_only,
                     metrics_addr=excluded.metrics_addr, ray_node_id=excluded.ray_node_id,
                     lost_gpus='[]', joined_at=excluded.joined_at, last_seen=excluded.last_seen""",
                (info.name, agent_id, json.dumps(info.to_dict()), info.speed_gflops,
                 int(info.cpu_only), metrics_addr, ray_node_id, now, now))

    def heartbeat(self, name: str, agent_id: str, lost_gpus: list[int]) -> bool:
        """Record a beat; False when no live registration of this agent exists."""
        with self.lock:
            cur = self.conn.execute(
                "UPDATE hosts SET last_seen = ?, state = 'alive', lost_gpus = ? "
                "WHERE name = ? AND agent_id = ? AND state != 'left'",
                (time.time(), json.dumps(lost_gpus), name, agent_id))
        return cur.rowcount == 1

    def set_state(self, name: str, state: str, agent_id: str | None = None) -> bool:
        with self.lock:
            if agent_id is None:
                cur = self.conn.execute("UPDATE hosts SET state = ? WHERE name = ?", (state, name))
            else:
                cur = self.conn.execute("UPDATE hosts SET state = ? WHERE name = ? AND agent_id = ?",
                                        (state, name, agent_id))
        return cur.rowcount == 1

    def mark_silent_lost(self, older_than: float) -> list[str]:
        """Alive hosts whose last beat is older than `older_than` become lost."""
        with self.lock:
            rows = self.conn.execute(
                "UPDATE hosts SET state = 'lost' WHERE state = 'alive' AND last_seen < ? RETURNING name",
                (older_than,)).fetchall()
        return [r[0] for r in rows]


def _host_row(row: tuple) -> HostRow:
    (name, agent_id, state, info_json, _speed, _cpu_only, metrics_addr, ray_node_id,
     lost_gpus, joined_at, last_seen) = row
    return HostRow(name=name, agent_id=agent_id, state=state, info=HostInfo.from_dict(json.loads(info_json)),
                   metrics_addr=metrics_addr, ray_node_id=ray_node_id, lost_gpus=json.loads(lost_gpus),
                   joined_at=joined_at, last_seen=last_seen)
