"""What a durable commit costs the head: its database's write paths per second
with `PRAGMA synchronous=FULL` (every commit waits for the disk) against
NORMAL (WAL commits wait for nothing; an OS crash or power cut can take the
last ones back), on this machine's disk, in the same run.

    python benchmarks/db_durability.py [--seconds 3] [--rounds 2]

Paths, each through the head's own code on a fresh state dir:
- submit: a science batch of 10 units (ScienceStore.submit);
- heartbeat: one PC's heartbeat (HostRecords.heartbeat, what every agent sends
  every 2 s);
- report_1: one host fetches and reports one unit (two commits, the store's
  smallest unit of work);
- report_batch: one host fetches and reports 200 units (what a dispatch task
  carries on a busy pool), counted in units.
Each path runs for --seconds with FULL, then NORMAL, then again (--rounds), and
the best rate of each is kept. Last line, JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.head.db import Database  # noqa: E402
from cluster.head.hosts import HostRecords  # noqa: E402
from cluster.science.states import HostCaps  # noqa: E402
from cluster.science.store import ScienceStore  # noqa: E402
from jobs.science.tasks import Report  # noqa: E402
from workers.records import HostInfo  # noqa: E402

MODES = ("FULL", "NORMAL")


def rate(op: Callable[[], int], seconds: float) -> float:
    """Work done per second by calling `op` (which returns how much it did) for `seconds`."""
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += op()
    return done / elapsed


@contextmanager
def head_db(mode: str) -> Iterator[tuple[Database, ScienceStore]]:
    """A fresh state dir's database, as the coordinator and its science store open it."""
    with tempfile.TemporaryDirectory() as tmp:  # on the disk a state dir (~/.salvage) is on here
        path = Path(tmp) / "salvage.db"
        db = Database(path)
        store = ScienceStore(path, Path(tmp) / "science")
        for conn in (db.conn, store.conn):
            conn.execute(f"PRAGMA synchronous={mode}")
        try:
            yield db, store
        finally:
            store.close()
            db.close()


def measure(mode: str, seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    with head_db(mode) as (_db, store):
        def submit() -> int:
            store.submit("noop", [{"x": i} for i in range(10)])
            return 1

        out["submit"] = rate(submit, seconds)
    with head_db(mode) as (db, _store):
        hosts = HostRecords(db)
        info = HostInfo(name="pc1", cpu_model="cpu", cpu_cores=4, ram_bytes=2**34, disk_bytes=2**40, gpus=[],
                        cpu_gflops=50.0, machine_id="0" * 32)
        hosts.upsert(info, "a" * 32, None, "node-1", "0" * 64, "m1")
        out["heartbeat"] = rate(lambda: int(hosts.heartbeat("pc1", "a" * 32, [], "busy", [], {}, {})), seconds)
    for key, units in (("report_1", 1), ("report_batch", 200)):
        with head_db(mode) as (_db, store):
            store.submit("noop", [{"x": i} for i in range(200_000)], min_quorum=1, target_nresults=1)

            def report(units: int = units) -> int:
                tasks = store.fetch_work(HostCaps("h1", machine="m1"), units)
                store.report("h1", [Report(t.result_id, "success", {"y": t.params["x"]}) for t in tasks])
                return len(tasks)

            out[key] = rate(report, seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {m: {} for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            for key, value in measure(mode, args.seconds).items():
                best[mode][key] = max(best[mode].get(key, 0.0), value)
    ratio = {k: best["FULL"][k] / best["NORMAL"][k] for k in best["FULL"]}
    for key in best["FULL"]:
        print(f"{key:>13}: FULL {best['FULL'][key]:9,.0f}/s   NORMAL {best['NORMAL'][key]:9,.0f}/s   "
              f"FULL keeps {ratio[key]:.0%}")
    print(json.dumps({"full_per_s": {k: round(v) for k, v in best["FULL"].items()},
                      "normal_per_s": {k: round(v) for k, v in best["NORMAL"].items()},
                      "full_over_normal": {k: round(v, 3) for k, v in ratio.items()}}))


if __name__ == "__main__":
    main()
