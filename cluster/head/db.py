"""The head's one database: every table of `STATE_DIR/salvage.db`, and the
ordered migrations that bring an older file up to date.

`PRAGMA user_version` says which migrations a file has had. A state dir
written before versions were kept (salvage up to 190fcc0) reads as version 0;
migration 1 is written so that it also fits such a file: it creates what is
missing and adds the one column that was added ad hoc then. A file from a
newer salvage is refused rather than guessed at.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Integer codes for the science tables' states are in cluster.science.states.
_V1_HOSTS_AND_JOBS = """
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
    checkpoint TEXT
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

# The BOINC-style store (cluster.science.store). need: copies still to send;
# single: adaptive replication chose one copy; n_sent counts result rows.
_V1_SCIENCE = """
CREATE TABLE IF NOT EXISTS sci_host (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS sci_batch (
    id            INTEGER PRIMARY KEY,
    app           TEXT NOT NULL,
    version       INTEGER NOT NULL,
    need_gpu      INTEGER NOT NULL,
    gpu_capable   INTEGER NOT NULL,
    min_vram      INTEGER NOT NULL,
    min_cc        REAL NOT NULL,
    created       REAL NOT NULL,
    started       REAL,             -- first copy sent
    finished      REAL,             -- every WU terminal
    n_wu          INTEGER NOT NULL,
    n_wu_unsent   INTEGER NOT NULL, -- WUs never sent to anyone
    n_done        INTEGER NOT NULL DEFAULT 0,
    n_error       INTEGER NOT NULL DEFAULT 0,
    n_assimilated INTEGER NOT NULL DEFAULT 0,
    output        TEXT NOT NULL     -- JSONL file of canonical results
);
CREATE TABLE IF NOT EXISTS sci_wu (
    id          INTEGER PRIMARY KEY,
    batch_id    INTEGER NOT NULL,
    params      TEXT NOT NULL,
    flops       REAL NOT NULL,
    min_quorum  INTEGER NOT NULL,
    target      INTEGER NOT NULL,
    max_error   INTEGER NOT NULL,
    max_total   INTEGER NOT NULL,
    delay_bound REAL NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0,
    error       INTEGER NOT NULL DEFAULT 0,
    need        INTEGER NOT NULL,
    single      INTEGER NOT NULL DEFAULT 0,
    n_sent      INTEGER NOT NULL DEFAULT 0,
    canonical   INTEGER,
    assim_seq   INTEGER             -- order in the batch's output file
);
CREATE INDEX IF NOT EXISTS sci_wu_unsent ON sci_wu(batch_id, id) WHERE need > 0;
CREATE INDEX IF NOT EXISTS sci_wu_assim ON sci_wu(batch_id, assim_seq) WHERE assim_seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS sci_wu_failed ON sci_wu(batch_id, error) WHERE state = 2;
CREATE TABLE IF NOT EXISTS sci_result (
    id        INTEGER PRIMARY KEY,
    wu_id     INTEGER NOT NULL,
    batch_id  INTEGER NOT NULL,
    host_id   INTEGER NOT NULL,
    server    INTEGER NOT NULL,  -- ServerState
    outcome   INTEGER NOT NULL DEFAULT 0,
    validate  INTEGER NOT NULL DEFAULT 0,
    sent      REAL NOT NULL,
    deadline  REAL NOT NULL,
    received  REAL,
    payload   TEXT,              -- result JSON, or the client's error message
    credit    REAL NOT NULL DEFAULT 0
);
-- (wu_id, host_id) was unique: replicas of a WU never shared a host (until v2).
CREATE UNIQUE INDEX IF NOT EXISTS sci_result_wu_host ON sci_result(wu_id, host_id);
-- Holds exactly the in-progress copies: the sweep's deadline scan and host_lost use it.
CREATE INDEX IF NOT EXISTS sci_result_deadline ON sci_result(deadline) WHERE server = 1;
-- Per (host, app): adaptive-replication trust, reliability counters, credit.
CREATE TABLE IF NOT EXISTS sci_host_app (
    host_id   INTEGER NOT NULL,
    app       TEXT NOT NULL,
    cv        INTEGER NOT NULL DEFAULT 0,  -- consecutive valid results
    n_success INTEGER NOT NULL DEFAULT 0,
    n_error   INTEGER NOT NULL DEFAULT 0,
    n_noreply INTEGER NOT NULL DEFAULT 0,
    n_valid   INTEGER NOT NULL DEFAULT 0,
    n_invalid INTEGER NOT NULL DEFAULT 0,
    credit    REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (host_id, app)
) WITHOUT ROWID;
-- Per (batch, host) counters so batch_status never scans results.
CREATE TABLE IF NOT EXISTS sci_batch_host (
    batch_id  INTEGER NOT NULL,
    host_id   INTEGER NOT NULL,
    n_sent    INTEGER NOT NULL DEFAULT 0,
    n_success INTEGER NOT NULL DEFAULT 0,
    n_error   INTEGER NOT NULL DEFAULT 0,
    n_noreply INTEGER NOT NULL DEFAULT 0,
    n_aborted INTEGER NOT NULL DEFAULT 0,
    n_valid   INTEGER NOT NULL DEFAULT 0,
    n_invalid INTEGER NOT NULL DEFAULT 0,
    credit    REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, host_id)
) WITHOUT ROWID;
"""


def _v1_baseline(conn: sqlite3.Connection) -> None:
    """The tables as of 190fcc0. Such a file has them already, perhaps without
    train_jobs.pool_json (added then without a version) and with sci_meta, the
    science tables' own version mark, which user_version replaces."""
    _run_script(conn, _V1_HOSTS_AND_JOBS + _V1_SCIENCE)
    if "pool_json" not in _columns(conn, "train_jobs"):  # NULL: a single-worker job
        conn.execute("ALTER TABLE train_jobs ADD COLUMN pool_json TEXT")
    if _has_table(conn, "sci_meta"):
        row = conn.execute("SELECT value FROM sci_meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] != "1":
            raise DatabaseError(f"sci_meta.schema: expected version 1, got {row[0]}")
        conn.execute("DROP TABLE sci_meta")


def _v2_integrity(conn: sqlite3.Connection) -> None:
    """A host is a credential, not a name: the hash of the secret the head gave it
    at its first join, and the machine it runs on (two names on one machine never
    count twice in a unit's quorum). Hosts from before have neither; the first
    agent to register under such a name gets its secret. Submissions become
    idempotent, and a batch's output file can be marked for a rewrite."""
    conn.execute("ALTER TABLE hosts ADD COLUMN secret_hash TEXT")
    conn.execute("ALTER TABLE hosts ADD COLUMN machine TEXT")
    # What the agent's last heartbeat said: its state and each GPU's readings.
    conn.execute("ALTER TABLE hosts ADD COLUMN agent_state TEXT")
    conn.execute("ALTER TABLE hosts ADD COLUMN live_json TEXT NOT NULL DEFAULT '[]'")
    # Why a PC or its GPUs take no work: the agent's pauses (owner policy, heat), its
    # health, and the operator's pause or drain (kept across restarts of the head).
    conn.execute("ALTER TABLE hosts ADD COLUMN paused_json TEXT NOT NULL DEFAULT '{}'")
    conn.execute("ALTER TABLE hosts ADD COLUMN health_json TEXT NOT NULL DEFAULT '{}'")
    conn.execute("ALTER TABLE hosts ADD COLUMN admin_json TEXT NOT NULL DEFAULT '{}'")
    # Its own BOINC client, as the agent reports it (NULL: the agent manages none).
    conn.execute("ALTER TABLE hosts ADD COLUMN boinc_json TEXT")
    # What happened to a PC, for `cluster status` and the page: pauses and resumes,
    # drains, health, preemptions, with their reasons.
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, t REAL NOT NULL, host TEXT NOT NULL,"
                 " kind TEXT NOT NULL, detail TEXT NOT NULL)")
    conn.execute("CREATE INDEX events_host ON events(host, id)")
    conn.execute("ALTER TABLE sci_host ADD COLUMN machine TEXT")  # NULL: its own name
    # A host may retry a copy that failed on it (small pools would starve otherwise);
    # what must hold is that one machine never has two live or successful copies of
    # a unit, which the store checks by machine, not by this index.
    # Set when results are withdrawn from a batch's output file (a liar's single
    # copies reopened): the file is then written again from the database, even
    # after a crash between that commit and the rewrite.
    conn.execute("ALTER TABLE sci_batch ADD COLUMN rewrite INTEGER NOT NULL DEFAULT 0")
    conn.execute("DROP INDEX IF EXISTS sci_result_wu_host")
    conn.execute("CREATE INDEX sci_result_wu_host ON sci_result(wu_id, host_id)")
    # A submission carries a key from its client; a retry after a timeout gets the
    # first reply back instead of a second job or batch. Written in the same
    # transaction as what it created.
    conn.execute("CREATE TABLE submissions (key TEXT PRIMARY KEY, kind TEXT NOT NULL, reply_json TEXT NOT NULL,"
                 " at REAL NOT NULL)")


def _v3_unsent_copies(conn: sqlite3.Connection) -> None:
    """Each batch counts the copies its units are still owed (the sum of their
    `need`), so that a status query is one row, not a scan of the unsent units."""
    conn.execute("ALTER TABLE sci_batch ADD COLUMN n_res_unsent INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE sci_batch SET n_res_unsent ="
                 " (SELECT coalesce(sum(need), 0) FROM sci_wu WHERE sci_wu.batch_id = sci_batch.id)")


# Migration k (1-based) brings a file from user_version k-1 to k. Append only:
# a released migration never changes, or files that already had it would differ.
MIGRATIONS = [_v1_baseline, _v2_integrity, _v3_unsent_copies]
LATEST = len(MIGRATIONS)


class DatabaseError(Exception):
    """The database cannot be opened as salvage's; `str()` is the one-line reason."""


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of `script` inside the caller's transaction (executescript
    would commit it first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def connect(path: str | Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection to the state dir's database, migrated to the latest version.

    isolation_level=None: callers run explicit transactions. Several connections
    (the coordinator's, the science store's) share the file; busy_timeout makes
    one wait for another's transaction instead of failing with "locked".

    Durable by default: with synchronous=FULL a commit is on the disk before the
    call that made it returns, so a power cut never takes back a job, batch, name
    or secret the head has acknowledged (NORMAL, in WAL mode, survives a crash of
    the process but not of the machine: the last commits can go). It costs one
    fsync a commit: benchmarks/db_durability.py measured 300 heartbeats/s with
    FULL against 8,600 with NORMAL (3.3 ms a fsync on the test machine's disk),
    so 200 PCs beating every 2 s take a third of it. The science store commits
    far more often (a fetch and a report per task, on every PC): it asks for
    NORMAL and makes only its submissions and cancellations FULL (`durable`).
    What a power cut can take from it is the last reports, which it is built to
    lose (their copies go out again; an output file ahead of the database is
    written again); and in WAL mode any FULL commit syncs the log with every
    commit before it, of either connection.
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous: expected FULL or NORMAL, got {synchronous!r}")
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def durable(conn: sqlite3.Connection) -> Iterator[None]:
    """The transactions inside commit with synchronous=FULL on a NORMAL connection."""
    conn.execute("PRAGMA synchronous=FULL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous=NORMAL")


def locked(err: BaseException) -> bool:
    """Whether `err` says another connection held the database past the busy wait
    (its transaction was rolled back: nothing of it was stored)."""
    return isinstance(err, sqlite3.OperationalError) and "locked" in str(err)


def migrate(conn: sqlite3.Connection) -> int:
    """Run the migrations this file has not had, each in its own transaction;
    returns the version it is at now."""
    while True:
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; another waits, then sees it done
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > LATEST:
                raise DatabaseError(f"database: version {version} was written by a newer salvage "
                                    f"(this one knows up to {LATEST}); upgrade salvage")
            if version == LATEST:
                conn.execute("COMMIT")
                return version
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def earlier_reply(conn: sqlite3.Connection, key: str | None, kind: str) -> dict | None:
    """The reply already given to the submission with this idempotency key."""
    if key is None:
        return None
    row = conn.execute("SELECT reply_json FROM submissions WHERE key = ? AND kind = ?", (key, kind)).fetchone()
    return None if row is None else json.loads(row[0])


def remember_reply(conn: sqlite3.Connection, key: str | None, kind: str, reply: dict) -> None:
    """Keep a submission's reply under its key; call inside the transaction that made it."""
    if key is not None:
        conn.execute("INSERT INTO submissions (key, kind, reply_json, at) VALUES (?, ?, ?, ?)",
                     (key, kind, json.dumps(reply), time.time()))


class Database:
    """One connection shared by the coordinator's threads, behind a lock."""

    def __init__(self, path: Path):
        self.path = path
        self.conn = connect(path)
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.conn.close()
