"""The head's science loop takes a report as soon as its task is done, not when
every task out is: a driver of its own on a one-node Ray on loopback."""
import os
import threading
import time

import ray

from cluster.head.db import Database
from cluster.head.hosts import HostRecords
from cluster.head.raynodes import RayNodes
from cluster.science.dispatch import ScienceDispatch
from cluster.science.store import ScienceStore


@ray.remote(num_cpus=1)
def finished_task():
    return []


@ray.remote(num_cpus=1)
def task_until(path: str):
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return []


def test_a_done_task_is_collected_while_another_is_still_running(ray_here, tmp_path):
    store = ScienceStore(tmp_path / "salvage.db", tmp_path / "science")
    db = Database(tmp_path / "salvage.db")
    loop = ScienceDispatch(store, HostRecords(db), RayNodes(), training=dict, log=print, stopping=threading.Event())
    release = tmp_path / "release"
    slow = task_until.remote(str(release))
    fast = finished_task.remote()
    ray.get(fast)
    loop.inflight = {slow: ("pc-slow", "node", [], time.monotonic(), 1),
                     fast: ("pc-fast", "node", [], time.monotonic(), 1)}
    timeout = 30.0
    start = time.monotonic()
    loop.collect(timeout=timeout)
    took = time.monotonic() - start
    try:
        assert list(loop.inflight) == [slow]  # the done one is taken, the other still out
        assert "pc-fast" in loop.units and "pc-slow" not in loop.units
        assert took < timeout / 3, f"collect waited {took:.1f} s of its {timeout} s for a task still running"
    finally:
        release.touch()
        ray.get(slow)
        db.close()
        store.close()
