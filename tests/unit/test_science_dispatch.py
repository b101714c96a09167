"""How the head sizes and spreads science tasks, with plain objects."""
from cluster.head.hosts import HostRow
from cluster.science.dispatch import (
    FIRST_UNITS,
    IN_FLIGHT_PER_HOST,
    MAX_UNITS,
    TASK_SECONDS,
    fair_share,
    host_caps,
    hosts_with_room,
    next_units,
)
from workers.records import GpuInfo, HostInfo


def row(name, gpus=()):
    info = HostInfo(name=name, cpu_model="cpu", cpu_cores=2, ram_bytes=2**33, disk_bytes=2**40,
                    gpus=[GpuInfo(index=i, uuid=f"u{i}", name=n, vram_bytes=v, compute_capability=cc, driver="d",
                                  speed_gflops=100.0) for i, (n, v, cc) in enumerate(gpus)], cpu_gflops=30.0)
    return HostRow(name=name, agent_id="x", state="alive", info=info, metrics_addr=None, ray_node_id="n",
                   lost_gpus=[], joined_at=0.0, last_seen=0.0)


def test_a_task_is_sized_to_last_about_two_seconds_on_its_host():
    assert FIRST_UNITS <= MAX_UNITS
    assert next_units(8, took_s=0.1) == int(8 * TASK_SECONDS / 0.1)  # fast host: more per task
    assert next_units(100, took_s=20.0) == 10  # slow host: fewer
    assert next_units(1, took_s=3600.0) == 1  # never none
    assert next_units(1000, took_s=0.0) == MAX_UNITS  # never unbounded


def test_one_task_takes_at_most_an_even_slice_of_what_is_owed():
    # 48 slow units, 3 hosts with 2 task slots each: 8 a task, however large a task
    # size the host learned on a fast app; a near-empty queue still hands out one.
    assert fair_share(48, hosts=3) == 48 // (3 * IN_FLIGHT_PER_HOST)
    assert fair_share(49, hosts=3) == 49 // (3 * IN_FLIGHT_PER_HOST) + 1
    assert fair_share(1, hosts=3) == 1
    assert fair_share(0, hosts=0) == 1
    assert fair_share(10**6, hosts=2) > MAX_UNITS  # a big queue leaves the learned size alone


def test_training_comes_first_and_a_host_has_at_most_two_tasks_out():
    hosts = [row("a"), row("b"), row("c")]
    room = hosts_with_room(hosts, out={"a": IN_FLIGHT_PER_HOST, "b": 1}, training={"c": 1})
    assert [r.name for r in room] == ["b"]
    assert [r.name for r in hosts_with_room(hosts, {}, {})] == ["a", "b", "c"]  # order kept


def test_host_capabilities_come_from_its_record():
    caps = host_caps(row("g", [("RTX 3060", 12 * 2**30, "8.6")]))
    assert not caps.cpu_only and caps.gpus[0].compute_capability == 8.6
    assert caps.gpus[0].vram_bytes == 12 * 2**30 and caps.speed_gflops == 100.0
    assert host_caps(row("cpu")).cpu_only
