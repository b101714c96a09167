"""One database module owns every table and upgrades older files step by step:
a state dir written by salvage at 190fcc0 (the fixture, made by a real loopback
cluster of that code: two PCs, a training job, two science batches) opens with
everything in it."""
import shutil
import sqlite3
from pathlib import Path

import pytest

from cluster.head.db import LATEST, Database, DatabaseError, connect
from cluster.head.hosts import HostRecords
from cluster.science.store import ScienceStore
from cluster.train.records import JobRecords

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "salvage-190fcc0.db"


@pytest.fixture
def old_state(tmp_path):
    db = tmp_path / "salvage.db"
    shutil.copy(FIXTURE, db)
    return db


def test_a_state_dir_from_190fcc0_opens_with_everything_in_it(old_state, tmp_path):
    before = sqlite3.connect(old_state)
    assert before.execute("PRAGMA user_version").fetchone()[0] == 0
    before.close()
    db = Database(old_state)
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    hosts = {h.name: h for h in HostRecords(db).all()}
    assert set(hosts) == {"pc-office", "pc-gtx1060"}
    assert [g.name for g in hosts["pc-gtx1060"].info.gpus] == ["GTX 1060"]
    jobs = JobRecords(db).all()
    assert [(j["id"], j["state"], j["host"], j["pool_json"]) for j in jobs] == [(1, "done", "pc-office", None)]
    assert len(JobRecords(db).entries(1, since=0)) == 9
    db.close()
    store = ScienceStore(old_state, tmp_path / "science")
    try:
        assert [(b["batch"], b["app"], b["done_wus"]) for b in store.batches()] == [(1, "hp-fold", 6), (2, "noop", 4)]
        credit = store.credit_by_host()
        assert set(credit) == {"pc-office", "pc-gtx1060"} and all(c > 0 for c in credit.values())
        assert store.check_consistency() == []
        # New work goes on where the old left off: ids are not reused.
        batch = store.submit("noop", [{"x": 7}], min_quorum=1)
        assert batch == 3
    finally:
        store.close()


def test_migrating_is_done_once_and_a_fresh_file_gets_every_table(tmp_path):
    conn = connect(tmp_path / "fresh.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"hosts", "train_jobs", "train_log", "sci_batch", "sci_wu", "sci_result", "sci_host_app"} <= tables
    assert "sci_meta" not in tables
    columns = {r[1] for r in conn.execute("PRAGMA table_info(train_jobs)")}
    assert "pool_json" in columns
    conn.close()
    again = connect(tmp_path / "fresh.db")  # nothing left to do, nothing broken
    assert again.execute("PRAGMA user_version").fetchone()[0] == LATEST
    again.close()


def test_a_file_from_a_newer_salvage_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "newer.db"
    conn = connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.execute("CREATE TABLE from_the_future (x)")
    conn.close()
    with pytest.raises(DatabaseError, match="^database: version .* newer salvage"):
        connect(path)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1
    assert check.execute("SELECT name FROM sqlite_master WHERE name = 'from_the_future'").fetchone()


def test_a_version_2_file_gets_each_batchs_count_of_unsent_copies(tmp_path):
    """Version 3 keeps the copies a batch is owed in one counter (status reads one
    row): a file from before it gets the counter from its units."""
    store = ScienceStore(tmp_path / "salvage.db", tmp_path / "science")
    batch = store.submit("noop", [{"x": i} for i in range(5)], min_quorum=2)
    assert store.batch_status(batch)["results"]["unsent"] == 10
    store.close()
    conn = sqlite3.connect(tmp_path / "salvage.db")
    conn.execute("ALTER TABLE sci_batch DROP COLUMN n_res_unsent")  # as version 2 wrote it
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    store = ScienceStore(tmp_path / "salvage.db", tmp_path / "science")
    try:
        status = store.batch_status(batch)
        assert (status["results"]["unsent"], status["quorum"]) == (10, 2)
        assert store.check_consistency() == []
    finally:
        store.close()
