"""`science status` says why units wait: the pure explanation from a batch's queue
and the PCs alive, in the situations an operator meets."""
from cluster.head.hosts import HostRow
from cluster.science.api import waiting
from cluster.science.dispatch import host_view
from cluster.science.waiting import GpuView, HostView, Queue, why_waiting
from jobs.science.apps.base import Needs
from workers.records import GpuInfo, HostInfo

CPU_APP = Needs()
GPU_APP = Needs(gpu=True, min_vram_bytes=4 * 2**30, min_compute_capability=7.0)
GTX1060 = GpuView(0, "GTX 1060", 3 * 2**30, 6.1)
RTX3060 = GpuView(0, "RTX 3060", 12 * 2**30, 8.6)


def host(name, *gpus, machine=None, blocked=None, training=False):
    return HostView(name, machine or name, tuple(gpus), blocked, training)


def queue(unsent=4, quorum=2, needs=CPU_APP, done=False):
    return Queue(unsent=unsent, quorum=quorum, needs=needs, done=done)


def test_one_pc_and_a_quorum_of_two_needs_a_second_host():
    assert why_waiting(queue(), [host("pc-a")]) == ["needs a second host for quorum 2 (1 host free for science)"]


def test_a_larger_quorum_counts_the_hosts_it_still_needs():
    assert why_waiting(queue(quorum=3), [host("pc-a")]) == ["needs 2 more hosts for quorum 3 (1 host free for science)"]
    assert why_waiting(queue(quorum=3), [host("pc-a"), host("pc-b")]) == [
        "needs a third host for quorum 3 (2 hosts free for science)"]


def test_two_names_on_one_machine_count_once():
    lines = why_waiting(queue(), [host("pc-a", machine="m1"), host("pc-a2", machine="m1")])
    assert lines == ["needs a second host for quorum 2 (2 hosts free for science, on 1 machine)"]


def test_the_host_that_trains_is_named_beside_the_quorum_it_leaves_short():
    lines = why_waiting(queue(), [host("pc-a"), host("pc-b", training=True)])
    assert lines == ["needs a second host for quorum 2 (1 host free for science)", "pc-b: training"]


def test_every_host_training():
    hosts = [host("pc-a", training=True), host("pc-b", RTX3060, training=True)]
    assert why_waiting(queue(), hosts) == ["all hosts busy with training"]


def test_paused_drained_and_training_hosts_each_say_why():
    hosts = [host("pc-a", training=True), host("pc-b", blocked="paused by the operator: new fans"),
             host("pc-c", blocked="drained by the operator: moving")]
    assert why_waiting(queue(), hosts) == [
        "no host free for science: pc-a training; pc-b paused by the operator: new fans; "
        "pc-c drained by the operator: moving"]


def test_no_host_alive():
    assert why_waiting(queue(), []) == ["no PC is alive: join one with `salvage worker join HEAD:PORT`"]


def test_a_gpu_app_waits_for_a_card_that_meets_its_needs():
    lines = why_waiting(queue(needs=GPU_APP), [host("pc-a", GTX1060), host("pc-b")])
    assert lines == ["waiting for a GPU with cc ≥ 7 and ≥ 4096 MiB: pc-a has GTX 1060 (cc 6.1, 3072 MiB); "
                     "pc-b is CPU-only"]


def test_a_fitting_card_that_is_lost_keeps_its_pc_from_gpu_work_only():
    lost = GpuView(0, "RTX 3060", 12 * 2**30, 8.6, blocked="GPU 0 lost")
    assert why_waiting(queue(needs=GPU_APP), [host("pc-a", lost)]) == ["no host free for science: pc-a GPU 0 lost"]
    # a CPU app still runs there
    assert why_waiting(queue(quorum=1), [host("pc-a", lost)]) == [
        "queued for the 1 host free for science (oldest batch first)"]


def test_enough_free_hosts_means_the_units_are_only_queued():
    hosts = [host("pc-a"), host("pc-b", RTX3060)]
    assert why_waiting(queue(), hosts) == ["queued for the 2 hosts free for science (oldest batch first)"]


def test_nothing_waits_once_sent_or_done():
    assert why_waiting(queue(unsent=0), [host("pc-a")]) == []
    assert why_waiting(queue(done=True), []) == []


def test_a_batch_status_from_the_store_is_explained():
    status = {"results": {"unsent": 6}, "quorum": 2, "done": False,
              "needs": {"gpu": False, "gpu_capable": True, "min_vram_bytes": 0, "min_compute_capability": 0.0}}
    assert waiting(status, [host("pc-a")]) == ["needs a second host for quorum 2 (1 host free for science)"]


def test_a_host_record_becomes_the_view_waiting_reads():
    info = HostInfo(name="pc-a", cpu_model="cpu", cpu_cores=2, ram_bytes=2**33, disk_bytes=2**40,
                    gpus=[GpuInfo(index=0, uuid="u0", name="RTX 3060", vram_bytes=12 * 2**30, compute_capability="8.6",
                                  driver="d")])
    row = HostRow(name="pc-a", agent_id="x", state="alive", info=info, metrics_addr=None, ray_node_id="n",
                  lost_gpus=[0], joined_at=0.0, last_seen=0.0, machine="m1",
                  admin={"host": {"state": "drained", "reason": "moving"}})
    view = host_view(row, training=False, reachable=True)
    assert view.machine == "m1" and view.gpus[0].compute_capability == 8.6
    assert view.blocked == "drained by the operator: moving"
    row.admin = {}
    view = host_view(row, training=True, reachable=True)
    assert view.blocked is None and view.training and view.gpus[0].blocked == "GPU 0 lost"
    assert host_view(row, training=False, reachable=False).blocked == "its Ray node is not up yet"
    row.paused = {"science": "preempted"}  # the agent has not heard yet that training ended
    assert host_view(row, training=False, reachable=True).training
