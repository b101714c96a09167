"""The head's database is durable by default and says so when it cannot write: its
connection commits with synchronous=FULL, the science store's hot path with
NORMAL but its submissions FULL, and a request that meets a locked database or
a full disk gets a one-line 503 or 507 over the real HTTP server with nothing
stored."""
import errno
import sqlite3
import threading

import pytest

from cluster.head.db import Database, connect, durable
from cluster.head.http import Route, serve
from cluster.science.states import HostCaps
from cluster.science.store import ScienceStore
from workers.headclient import HeadClient, HeadError
from workers.raynode import free_ports

HOST = "127.0.0.2"
TOKEN = "t" * 64
FULL, NORMAL = 2, 1


def synchronous(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA synchronous").fetchone()[0]


def commit_modes(statements: list[str]) -> list[str]:
    """The synchronous mode each COMMIT in a trace ran under."""
    mode, out = "NORMAL", []
    for sql in statements:
        if sql.startswith("PRAGMA synchronous="):
            mode = sql.split("=", 1)[1]
        elif sql == "COMMIT":
            out.append(mode)
    return out


def test_the_heads_connection_commits_durably_and_the_stores_submissions_too(tmp_path):
    db = Database(tmp_path / "salvage.db")
    store = ScienceStore(tmp_path / "salvage.db", tmp_path / "out")
    try:
        assert synchronous(db.conn) == FULL
        assert synchronous(store.conn) == NORMAL  # fetches and reports: losing the last only reissues them
        statements = []
        store.conn.set_trace_callback(statements.append)
        store.submit("noop", [{"x": 1}])
        store.fetch_work(HostCaps("pc1"), 10)
        store.conn.set_trace_callback(None)
        assert commit_modes(statements) == ["FULL", "NORMAL", "NORMAL"]  # the submit; the new host; the fetch
        assert synchronous(store.conn) == NORMAL
    finally:
        store.close()
        db.close()
    with pytest.raises(ValueError, match="^synchronous:"):
        connect(tmp_path / "salvage.db", synchronous="OFF")


def test_durable_restores_normal_after_a_failed_transaction(tmp_path):
    conn = connect(tmp_path / "x.db", synchronous="NORMAL")
    with pytest.raises(RuntimeError), durable(conn):
        assert synchronous(conn) == FULL
        raise RuntimeError("boom")
    assert synchronous(conn) == NORMAL
    conn.close()


@pytest.fixture
def head(tmp_path):
    path = tmp_path / "salvage.db"
    writer = connect(path)
    writer.execute("CREATE TABLE IF NOT EXISTS things (x)")
    writer.execute("PRAGMA busy_timeout = 200")

    def store_thing(_body):
        writer.execute("BEGIN IMMEDIATE")
        try:
            writer.execute("INSERT INTO things VALUES (1)")
        except BaseException:
            writer.execute("ROLLBACK")
            raise
        writer.execute("COMMIT")
        return {"ok": True}

    def full_disk(_body):
        raise OSError(errno.ENOSPC, "No space left on device")

    routes = {("POST", "/api/thing"): Route(store_thing), ("POST", "/api/full"): Route(full_disk)}
    (port,) = free_ports(1, HOST)
    server = serve(routes, HOST, port, TOKEN, log=lambda line: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield HeadClient(HOST, port, TOKEN), path, writer
    server.shutdown()
    server.server_close()
    writer.close()


def test_a_locked_database_is_a_one_line_503_and_nothing_is_stored(head):
    client, path, writer = head
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(HeadError) as err:
            client.post("/api/thing", {})
        assert err.value.status == 503 and str(err.value).startswith("database: busy")
        assert "\n" not in str(err.value)
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert writer.execute("SELECT count(*) FROM things").fetchone()[0] == 0
    assert client.post("/api/thing", {}) == {"ok": True}  # once the lock is gone, it goes through


def test_a_full_disk_is_a_one_line_507(head):
    client, _, _ = head
    with pytest.raises(HeadError) as err:
        client.post("/api/full", {})
    assert err.value.status == 507 and str(err.value).startswith("disk:") and "\n" not in str(err.value)


def test_a_store_reopened_after_a_crash_mid_rewrite_keeps_no_temp_file(tmp_path):
    store = ScienceStore(tmp_path / "salvage.db", tmp_path / "out")
    batch = store.submit("noop", [{"x": 1}])
    store.close()
    torn = tmp_path / "out" / f"batch-{batch}.jsonl.tmp"  # what a kill during a rewrite leaves
    torn.write_text('{"wu": 1, "par')
    ScienceStore(tmp_path / "salvage.db", tmp_path / "out").close()
    assert not torn.exists()
