"""A host is a credential, not a name: registration against the real hosts table
and API, with a stand-in for Ray's node list (no cluster). Fuzzed records are
refused whole, a name stays with the PC that holds its secret, work goes only
to the node a registration bound, and service discovery cannot be pointed
elsewhere. A PC whose agent starts again takes its name back at once from its
last agent, but only once that one is silent and gone."""
import copy
import json
import random
import socket
import sqlite3
import time

import pytest

from cluster.head.db import Database
from cluster.head.hosts import HostRecords, HostsApi, machine_key
from cluster.head.http import ApiError
from workers.raynode import free_ports
from workers.records import GpuInfo, HostInfo, RecordError

AGENT_A = "a" * 32
AGENT_B = "b" * 32


class Nodes:
    """Ray's node list as RayNodes shows it: what `find` and `alive` answer."""

    def __init__(self):
        self.nodes = []

    def add(self, node_id, host, agent, ip="127.0.0.2"):
        self.nodes.append({"NodeID": node_id, "Alive": True, "NodeManagerAddress": ip,
                           "Labels": {"salvage.io/host": host, "salvage.io/agent": agent}})

    def refresh(self):
        pass

    def find(self, host, agent):
        return next((n for n in self.nodes if n["Alive"] and n["Labels"]["salvage.io/host"] == host
                     and n["Labels"]["salvage.io/agent"] == agent), None)

    def alive(self, node_id):
        return next((n for n in self.nodes if n["NodeID"] == node_id and n["Alive"]), None)

    def mark_dead(self, node_id):
        for n in self.nodes:
            if n["NodeID"] == node_id:
                n["Alive"] = False


def record(name="pc1", **extra):
    info = HostInfo(name=name, cpu_model="cpu", cpu_cores=4, ram_bytes=2**34, disk_bytes=2**40,
                    gpus=[GpuInfo(index=0, uuid="GPU-1", name="RTX 3060", vram_bytes=12 * 2**30,
                                  compute_capability="8.6", driver="550", speed_gflops=9000.0)],
                    cpu_gflops=50.0, machine_id="0" * 32)
    return {**info.to_dict(), **extra}


@pytest.fixture
def api(tmp_path):
    db = Database(tmp_path / "salvage.db")
    nodes = Nodes()
    hosts = HostRecords(db)
    lost = []
    api = HostsApi(hosts, nodes, epoch=1.0, running=dict, busy=dict, on_lost=lost.append,
                   log=lambda line: None, about={}, loopback=True)
    api.lost = lost
    yield api, nodes, hosts
    db.close()


def register(api, host, agent, secret=None, metrics=None):
    return api.api_register({"host": host, "agent_id": agent, "secret": secret, "metrics_addr": metrics})


def test_the_first_join_binds_the_name_to_a_secret_and_only_it_reclaims_the_name(api):
    api, nodes, hosts = api
    nodes.add("node-1", "pc1", AGENT_A)
    secret = register(api, record(), AGENT_A)["secret"]
    assert len(secret) == 64
    assert hosts.get("pc1").secret_hash != secret  # only its hash is kept
    hosts.set_state("pc1", "lost")
    nodes.add("node-2", "pc1", AGENT_B)  # a new agent, on another PC, takes the lost PC's name
    with pytest.raises(ApiError) as err:
        register(api, record(), AGENT_B, secret="guess" * 13)
    assert err.value.status == 409 and "belongs to another PC" in str(err.value)
    with pytest.raises(ApiError):
        register(api, record(), AGENT_B)  # no secret at all
    assert hosts.get("pc1").ray_node_id == "node-1"  # nothing of it was stored
    assert "secret" not in register(api, record(), AGENT_B, secret=secret)  # the PC itself, back
    assert hosts.get("pc1").ray_node_id == "node-2" and hosts.get("pc1").state == "alive"


def silence(hosts, name, seconds):
    with hosts.db.lock:
        hosts.db.conn.execute("UPDATE hosts SET last_seen = ? WHERE name = ?", (time.time() - seconds, name))


def test_a_restarted_agent_takes_its_name_back_once_the_last_one_is_silent_and_gone(api):
    api, nodes, hosts = api
    nodes.add("node-1", "pc1", AGENT_A)
    secret = register(api, record(), AGENT_A, metrics=f"127.0.0.2:{free_ports(1)[0]}")["secret"]
    nodes.add("node-2", "pc1", AGENT_B)
    # Still beating: the same PC running a second agent, not a restart.
    with pytest.raises(ApiError) as err:
        api.api_check({"name": "pc1", "agent_id": AGENT_B, "secret": secret})
    assert err.value.status == 423 and "still runs" in str(err.value)
    silence(hosts, "pc1", 30)
    with pytest.raises(ApiError) as err:  # no secret: another PC, refused as ever
        api.api_check({"name": "pc1", "agent_id": AGENT_B, "secret": None})
    assert err.value.status == 409
    assert hosts.get("pc1").agent_id == AGENT_A and api.lost == []
    # Silent and nothing listens where its metrics were: gone. The name comes free now.
    api.api_check({"name": "pc1", "agent_id": AGENT_B, "secret": secret})
    assert api.lost == ["pc1"] and nodes.alive("node-1") is None
    assert hosts.events("pc1")[0]["kind"] == "restarted"
    register(api, record(), AGENT_B, secret=secret)
    row = hosts.get("pc1")
    assert (row.state, row.agent_id, row.ray_node_id) == ("alive", AGENT_B, "node-2")


def test_a_silent_agent_whose_metrics_port_answers_keeps_its_name(api):
    api, nodes, hosts = api
    with socket.socket() as listening:  # a hung agent: no beats, but its process is there
        listening.bind(("127.0.0.2", 0))
        listening.listen()
        nodes.add("node-1", "pc1", AGENT_A)
        secret = register(api, record(), AGENT_A, metrics=f"127.0.0.2:{listening.getsockname()[1]}")["secret"]
        silence(hosts, "pc1", 10)
        nodes.add("node-2", "pc1", AGENT_B)
        with pytest.raises(ApiError) as err:
            register(api, record(), AGENT_B, secret=secret)
        assert err.value.status == 423
    row = hosts.get("pc1")
    assert (row.state, row.agent_id, row.ray_node_id) == ("alive", AGENT_A, "node-1") and api.lost == []


def test_work_goes_only_to_the_node_the_registration_bound(api):
    api, nodes, hosts = api
    nodes.add("impostor", "pc1", "c" * 32)  # another node that merely carries the host label
    nodes.add("node-1", "pc1", AGENT_A)
    register(api, record(), AGENT_A)
    row = hosts.get("pc1")
    assert row.ray_node_id == "node-1" and nodes.alive(row.ray_node_id)["NodeID"] == "node-1"
    nodes.nodes[1]["Alive"] = False  # its own node dies; the impostor's label does not stand in
    assert nodes.alive(hosts.get("pc1").ray_node_id) is None


def test_service_discovery_cannot_be_pointed_elsewhere(api):
    api, nodes, hosts = api
    nodes.add("node-1", "pc1", AGENT_A, ip="127.0.0.2")
    for bad in ("10.0.0.1:9100", "prometheus.example.org:80", "127.0.0.2:0", "127.0.0.2:99999", "127.0.0.2", 7):
        with pytest.raises(ApiError) as err:
            register(api, record(), AGENT_A, metrics=bad)
        assert err.value.status == 400 and err.value.args[0].startswith("metrics_addr:")
    assert hosts.get("pc1") is None
    register(api, record(), AGENT_A, metrics="127.0.0.2:9470")
    assert api.sd_targets() == [{"targets": ["127.0.0.2:9470"], "labels": {"host": "pc1"}}]


BAD_RECORDS = [
    ("cpu_gflops", "x"), ("cpu_gflops", float("nan")), ("cpu_gflops", 1e300), ("cpu_cores", 0),
    ("cpu_cores", "4"), ("cpu_cores", True), ("ram_bytes", -1), ("name", "bad name!"), ("name", ""),
    ("name", 7), ("gpus", "lots"), ("gpus", [{}]), ("notes", ["x"] * 50), ("notes", [1]), ("simulated", "yes"),
    ("duty_cycle", 0), ("duty_cycle", 2.5), ("machine_id", "../../etc"), ("surprise", 1), ("cpu_model", "x" * 5000),
]


@pytest.mark.parametrize("key, value", BAD_RECORDS)
def test_a_malformed_host_record_is_a_one_line_400_and_nothing_is_stored(api, key, value):
    api, nodes, hosts = api
    nodes.add("node-1", "pc1", AGENT_A)
    with pytest.raises(ApiError) as err:
        register(api, record(**{key: value}), AGENT_A)
    assert err.value.status == 400 and "\n" not in str(err.value)
    assert hosts.all() == []


def test_fuzzed_records_never_get_past_the_checks_half_made(api):
    api, nodes, hosts = api
    rng = random.Random(4)
    junk = [None, -1, 0, 1e308, float("inf"), "", "x" * 300, [], {}, [1, 2], {"a": 1}, True, "7.5", 2**70]
    good = record()
    stored = 0
    for _ in range(400):
        body = copy.deepcopy(good)
        for _ in range(rng.randint(1, 3)):
            gpus = body.get("gpus")
            gpu = gpus[0] if isinstance(gpus, list) and gpus and isinstance(gpus[0], dict) else None
            target = gpu if gpu is not None and rng.random() < 0.4 else body
            target[rng.choice(sorted(target))] = rng.choice(junk)
        try:
            info = HostInfo.from_dict(body)
        except RecordError as err:
            assert str(err).startswith("host") and "\n" not in str(err), err
            continue
        # Whatever passed is a complete, typed record that the head can use.
        json.dumps(info.to_dict())
        assert isinstance(info.speed_gflops, float)
        stored += 1
    assert stored < 400  # the fuzzing did hit the checks


def test_heartbeats_are_checked_too(api):
    api, nodes, hosts = api
    nodes.add("node-1", "pc1", AGENT_A)
    register(api, record(), AGENT_A)
    for bad in ({"lost_gpus": "all"}, {"lost_gpus": [True]}, {"lost_gpus": [-1]}, {"state": "pwned"}):
        with pytest.raises(ApiError):
            api.api_heartbeat({"name": "pc1", "agent_id": AGENT_A, **bad})
    assert api.api_heartbeat({"name": "pc1", "agent_id": AGENT_A, "lost_gpus": [0]})["epoch"] == 1.0
    with pytest.raises(ApiError) as err:
        api.api_heartbeat({"name": "pc1", "agent_id": "not hex"})
    assert err.value.status == 400


def test_simulated_pcs_are_separate_machines_only_on_a_loopback_head():
    sim = HostInfo.from_dict(record(name="sim-1", simulated=True))
    real = HostInfo.from_dict(record(name="alias-1"))
    real2 = HostInfo.from_dict(record(name="alias-2"))
    assert machine_key(real, loopback=True) == machine_key(real2, loopback=True)  # one PC, two names
    assert machine_key(sim, loopback=True) != machine_key(real, loopback=True)
    assert machine_key(sim, loopback=False) == machine_key(real, loopback=False)  # no escape on the LAN


def test_an_operator_frees_a_dead_pcs_name(api, tmp_path):
    api, nodes, hosts = api
    nodes.add("node-1", "pc1", AGENT_A)
    register(api, record(), AGENT_A)
    with pytest.raises(ApiError) as err:
        api.api_forget({"name": "pc1"})
    assert err.value.status == 409  # alive: stop it first
    hosts.set_state("pc1", "lost")
    api.api_forget({"name": "pc1"})
    nodes.add("node-2", "pc1", AGENT_B)
    assert "secret" in register(api, record(), AGENT_B)  # a new PC may take the name now
    conn = sqlite3.connect(tmp_path / "salvage.db")
    assert conn.execute("SELECT count(*) FROM hosts").fetchone()[0] == 1
