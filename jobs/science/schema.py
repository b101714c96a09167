"""SQLite schema of the science store and how a connection is opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1

# Integer codes for states (see records.py) keep rows and indexes compact.
SCHEMA = """
CREATE TABLE IF NOT EXISTS sci_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

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

-- need: copies still to send (UNSENT); single: adaptive replication chose one copy.
-- n_sent counts result rows, for max_total_results.
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
-- (wu_id, host_id) is unique: replicas of a WU never share a host.
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


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) the store's database in WAL mode.

    isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT),
    one per store call, so each call's transitions land atomically.
    """
    # timeout: the coordinator may write the same file through its own
    # connection; wait for its transaction instead of failing with "locked".
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a process crash; only an OS crash or
    # power loss can roll back the last few commits, never corrupt the file.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA mmap_size=268435456")
    # A larger WAL lets hot WU/index pages be rewritten in the log many times
    # between checkpoints instead of being copied to the database each time.
    conn.execute("PRAGMA wal_autocheckpoint=10000")
    conn.executescript(SCHEMA)
    row = conn.execute("SELECT value FROM sci_meta WHERE key='schema'").fetchone()
    if row is None:
        conn.execute("INSERT INTO sci_meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) != SCHEMA_VERSION:
        raise ValueError(f"sci_meta.schema: expected version {SCHEMA_VERSION}, got {row[0]}")
    return conn
