"""Science batches on real Ray nodes on loopback: a lying host, chaos (nodes
killed and re-added at random), a head restart mid-batch, and bad input."""
import json
import random
import re
import signal
import time
from collections import Counter

import pytest
from localcluster import salvage

from cluster.science.dispatch import IN_FLIGHT_PER_HOST

HONEST = ("sci-a", "sci-b", "sci-c", "sci-d")


@pytest.fixture(scope="module")
def pool(local_cluster):
    for name in HONEST:
        local_cluster.join(name, "")
    for name in HONEST:
        local_cluster.wait_state(name, "alive", timeout=120)
    return local_cluster


def sci(pool, *args, check=True):
    return salvage("science", *args, "--state-dir", str(pool.state_dir), check=check)


def submit(pool, *args) -> int:
    return int(sci(pool, "submit", *args).stdout.strip().splitlines()[-1])


def status(pool, batch=None) -> dict:
    args = ["status", "--json"] + ([str(batch)] if batch is not None else [])
    return json.loads(sci(pool, *args).stdout)


def wait_done(pool, batch, timeout=240, during=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = status(pool, batch)
        if s["done"]:
            return s
        if during:
            during()
        time.sleep(1)
    raise AssertionError(f"batch {batch} not done after {timeout} s: {status(pool, batch)}")


def consistent(pool) -> list:
    return pool.client().post("/api/science/check", {})["violations"]


def test_a_lying_host_is_caught_and_earns_nothing(pool):
    pool.join("liar", "", "--corrupt-results")
    pool.wait_state("liar", "alive", timeout=120)
    batch = submit(pool, "noop", "--grid", "x=" + ",".join(map(str, range(120))), "--quorum", "2")
    s = wait_done(pool, batch)
    assert s["wus"]["done"] == 120 and s["wus"]["error"] == 0
    assert "liar" not in s["credit_by_host"]
    assert set(s["credit_by_host"]) <= set(HONEST) and s["credit_by_host"]
    hosts = {(h["host"], h["app"]): h for h in status(pool)["hosts"]}
    liar = hosts.get(("liar", "noop"))
    assert liar is not None and liar["valid"] == 0 and liar["invalid"] > 0 and liar["consecutive_valid"] == 0
    lines = [json.loads(line) for line in sci(pool, "results", str(batch)).stdout.splitlines()]
    assert len(lines) == 120
    assert all(line["result"]["y"] == line["params"]["x"] for line in lines)
    assert consistent(pool) == []
    csv = sci(pool, "results", str(batch), "--format", "csv").stdout.splitlines()
    assert len(csv) == 121  # header + one row per work unit
    pool.stop_agent("liar")


def test_chaos_nodes_killed_and_readded_lose_nothing(pool):
    rng = random.Random(7)
    batch = submit(pool, "hp-fold", "--sequence", "HPHPPHHPHPPHPHHPPHPH", "--seeds", "500",
                   "--params", '{"sweeps": 25000, "replicas": 2}', "--quorum", "2")
    killed: dict[str, float] = {}
    kills = []
    next_kill = [time.monotonic() + 3]

    alive = list(HONEST)

    def chaos():
        # Every few seconds a random PC loses power, and a few seconds later a PC
        # joins in its place. It joins under a new name: the store never gives a
        # host a second copy of a unit it already had (BOINC's one result per host
        # per unit), so on a 4-PC pool a returning name could starve a unit of hosts.
        now = time.monotonic()
        for name, at in list(killed.items()):
            if now - at > 4:
                fresh = f"{name.split('.')[0]}.{len(kills)}"
                pool.join(fresh, "")
                alive.append(fresh)
                del killed[name]
        if now > next_kill[0] and len(alive) > 2:
            victim = rng.choice(alive)
            alive.remove(victim)
            pool.stop_agent(victim, signal.SIGKILL)
            killed[victim] = now
            kills.append(victim)
            next_kill[0] = now + rng.uniform(5, 10)

    s = wait_done(pool, batch, timeout=420, during=chaos)
    assert kills, "the batch finished before any PC was killed: make its work units longer"
    for name in list(killed):
        pool.join(f"{name.split('.')[0]}.end", "")
        alive.append(f"{name.split('.')[0]}.end")
    assert s["wus"]["done"] + s["wus"]["error"] == 500
    # A unit may end in a named error (BOINC's limits), but none is lost or left open.
    assert s["wus"]["done"] >= 450, s
    assert consistent(pool) == []
    lines = [json.loads(line) for line in sci(pool, "results", str(batch)).stdout.splitlines()]
    assert len(lines) == s["wus"]["done"] == len({line["wu"] for line in lines})
    # A dead PC's node stays listed in Ray for a while; nothing more is sent to it after
    # its first failed task, so only the tasks it held when it died fail.
    # Ray may tell the head of a death only after the batch ends; the head still listens.
    log = pool.state_dir / "logs" / "coordinator.log"
    pool.wait_for(lambda: "science task on" in log.read_text(), 60, "a killed PC's task reported failed")
    failed = Counter(re.findall(r"science task on (\S+) failed", log.read_text()))
    assert max(failed.values()) <= IN_FLIGHT_PER_HOST, failed
    for name in alive:
        pool.wait_state(name, "alive", timeout=120)


def test_a_head_restart_mid_batch_continues_and_loses_nothing(pool):
    batch = submit(pool, "hp-fold", "--sequence", "HHPPHPPHPPHPPHPPHPPHPPHH", "--seeds", "150",
                   "--params", '{"sweeps": 750, "replicas": 2}', "--quorum", "2")
    pool.wait_for(lambda: status(pool, batch)["wus"]["done"] > 0, 120, "some work units done")
    salvage("cluster", "down", "--state-dir", str(pool.state_dir))
    pool.up()
    s = wait_done(pool, batch, timeout=300)
    assert s["wus"]["done"] == 150
    assert consistent(pool) == []
    assert len(sci(pool, "results", str(batch)).stdout.splitlines()) == 150


@pytest.mark.parametrize("args, message", [
    (["nope", "--grid", "x=1"], "app: unknown app 'nope'"),
    (["lj-md", "--grid", "T=-1 rho=0.5"], "temperature"),
    (["noop", "--grid", "x=1,2,oops"], "params[2]"),
    (["hp-fold", "--sequence", "HPXH"], "sequence"),
])
def test_bad_parameters_get_one_line_errors_and_store_nothing(pool, args, message):
    before = len(status(pool)["batches"])
    proc = sci(pool, "submit", *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert len(status(pool)["batches"]) == before
