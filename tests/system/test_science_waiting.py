"""`science status` says why units wait, on a live loopback cluster: a quorum-2
batch on a pool of one PC waits for a second host and finishes once one joins;
with no PC left, new units say so."""
import json

from localcluster import salvage

SECOND_HOST = "needs a second host for quorum 2 (1 host free for science)"


def science(cluster, *args) -> str:
    return salvage("science", *args, "--state-dir", str(cluster.state_dir)).stdout


def batch_status(cluster, batch: int) -> dict:
    return json.loads(science(cluster, "status", str(batch), "--json"))


def submit_noop(cluster, n: int) -> int:
    grid = "x=" + ",".join(map(str, range(n)))
    return int(science(cluster, "submit", "noop", "--grid", grid, "--quorum", "2").strip().splitlines()[-1])


def test_a_quorum_of_two_on_one_pc_waits_for_a_second_host(local_cluster):
    local_cluster.join("solo", "")
    local_cluster.wait_state("solo", "alive", timeout=120)
    batch = submit_noop(local_cluster, 6)
    local_cluster.wait_for(lambda: SECOND_HOST in batch_status(local_cluster, batch)["waiting"], 120,
                           "the batch to say it needs a second host")
    assert f"waiting: {SECOND_HOST}" in science(local_cluster, "status", str(batch))
    table = science(local_cluster, "status")
    assert SECOND_HOST in table and "waiting" in table
    listed = json.loads(science(local_cluster, "status", "--json"))["batches"]
    assert next(b for b in listed if b["batch"] == batch)["waiting"] == [SECOND_HOST]

    local_cluster.join("duo", "")
    local_cluster.wait_for(lambda: batch_status(local_cluster, batch)["done"], 180, "the batch to finish on two PCs")
    status = batch_status(local_cluster, batch)
    assert status["waiting"] == [] and status["wus"]["done"] == 6
    assert set(status["credit_by_host"]) == {"solo", "duo"}


def test_with_no_pc_alive_units_say_so(local_cluster):
    for name in list(local_cluster.agents):
        local_cluster.stop_agent(name)
    batch = submit_noop(local_cluster, 2)
    assert batch_status(local_cluster, batch)["waiting"] == [
        "no PC is alive: join one with `salvage worker join HEAD:PORT`"]
