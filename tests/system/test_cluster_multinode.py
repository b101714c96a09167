"""A head and three agents with different simulated GPUs on loopback, as real
Ray nodes: what `status` shows, what /metrics serves, and who is lost."""
import json
import signal
import time
import urllib.request

import psutil
import pytest
from localcluster import salvage
from prometheus_client.parser import text_string_to_metric_families

MIXED = "GTX 1060:3GB:6.1,RTX 3060:12GB:8.6"


@pytest.fixture(scope="module")
def pool(local_cluster, tmp_path_factory):
    spec = tmp_path_factory.mktemp("spec") / "gpus.json"
    spec.write_text(json.dumps([{"name": "GTX 1070", "vram": "8GB", "cc": "6.1", "temperature_c": 50}]))
    local_cluster.spec_file = spec
    local_cluster.join("mixed", MIXED)
    local_cluster.join("hot", f"@{spec}")
    local_cluster.join("office", "")
    for name in ("mixed", "hot", "office"):
        local_cluster.wait_state(name, "alive", timeout=90)
    return local_cluster


def scrape(addr: str) -> dict:
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def test_status_lists_every_gpu_of_every_pc(pool):
    nodes = {n["name"]: n for n in pool.status()["nodes"]}
    mixed = nodes["mixed"]
    assert mixed["state"] == "alive" and mixed["cpu_only"] is False
    assert [(g["name"], g["vram_bytes"], g["compute_capability"]) for g in mixed["gpus"]] == [
        ("GTX 1060", 3 * 2**30, "6.1"), ("RTX 3060", 12 * 2**30, "8.6")]
    assert [g["name"] for g in nodes["hot"]["gpus"]] == ["GTX 1070"]
    assert nodes["office"]["cpu_only"] is True and nodes["office"]["gpus"] == []
    for n in nodes.values():
        assert n["speed_gflops"] > 0


def test_ray_nodes_carry_the_probed_labels(pool):
    labels = pool.node("mixed")["ray_labels"]
    assert labels["salvage.io/gpu0-model"] == "GTX-1060"
    assert labels["salvage.io/gpu1-model"] == "RTX-3060"
    assert labels["salvage.io/gpu1-cc"] == "8.6"
    assert labels["salvage.io/gpu1-vram-mb"] == str(12 * 1024)
    assert pool.node("office")["ray_labels"]["salvage.io/cpu-only"] == "true"


def test_no_node_spends_its_cpu_on_a_log_monitor_nobody_reads(pool):
    # The head reads no worker output, so no node tails its log files for it.
    gcs = f"127.0.0.2:{pool.ray_port}"
    ours = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    ours = [c for c in ours if gcs in c]
    assert sum("raylet" in c.split()[0] for c in ours) == 4, ours  # the head and three PCs
    assert not [c for c in ours if "log_monitor" in c]


def test_status_table_is_readable(pool):
    out = salvage("cluster", "status", "--state-dir", str(pool.state_dir)).stdout
    assert "RTX 3060" in out and "GTX 1060" in out and "CPU only" in out and "alive" in out


def test_agent_metrics_parse_and_carry_gpu_series(pool):
    samples = scrape(pool.node("mixed")["metrics"])
    info = {lab["gpu"]: lab for lab, _ in samples["salvage_gpu_info"]}
    assert info["0"]["model"] == "GTX 1060" and info["1"]["model"] == "RTX 3060"
    assert info["1"]["compute_capability"] == "8.6"
    totals = {lab["gpu"]: v for lab, v in samples["salvage_gpu_memory_total_bytes"]}
    assert totals == {"0": 3 * 2**30, "1": 12 * 2**30}
    for name in ("salvage_gpu_temperature_celsius", "salvage_gpu_utilization_ratio",
                 "salvage_gpu_power_watts", "salvage_gpu_power_limit_watts", "salvage_gpu_fan_ratio",
                 "salvage_gpu_sm_clock_hertz", "salvage_gpu_memory_used_bytes", "salvage_gpu_throttle",
                 "salvage_host_cpu_utilization_ratio", "salvage_host_memory_total_bytes",
                 "salvage_host_disk_total_bytes", "salvage_agent_state", "salvage_device_speed_flops"):
        assert name in samples, name
    assert ({"state": "idle"}, 1.0) in samples["salvage_agent_state"]
    office = scrape(pool.node("office")["metrics"])
    assert "salvage_gpu_info" not in office and "salvage_host_cpu_utilization_ratio" in office


def test_a_heated_gpu_shows_in_metrics_at_the_next_poll(pool):
    pool.spec_file.write_text(json.dumps([{"name": "GTX 1070", "vram": "8GB", "cc": "6.1",
                                           "temperature_c": 91, "utilization": 0.97}]))
    addr = pool.node("hot")["metrics"]

    def hot():
        s = scrape(addr)
        temp = dict((lab["gpu"], v) for lab, v in s["salvage_gpu_temperature_celsius"])
        throttled = {lab["reason"]: v for lab, v in s["salvage_gpu_throttle"] if lab["gpu"] == "0"}
        return temp.get("0") == 91 and throttled["sw_thermal"] == 1.0 and s

    s = pool.wait_for(hot, 20, "the GPU to read 91 °C")
    assert dict((lab["gpu"], v) for lab, v in s["salvage_gpu_utilization_ratio"])["0"] == pytest.approx(0.97)


def test_service_discovery_lists_every_live_agent(pool):
    sd = json.loads(urllib.request.urlopen(f"http://{pool.address}/sd/agents", timeout=5).read())
    hosts = {t["labels"]["host"]: t["targets"][0] for t in sd}
    assert set(hosts) >= {"mixed", "hot", "office"}
    assert hosts["mixed"] == pool.node("mixed")["metrics"]


def test_head_metrics_count_hosts_and_gpus(pool):
    samples = scrape(pool.address)
    states = {lab["state"]: v for lab, v in samples["salvage_hosts"]}
    assert states["alive"] >= 3
    models = {lab["model"]: v for lab, v in samples["salvage_gpus"]}
    assert models["GTX 1060"] == 1 and models["RTX 3060"] == 1 and models["GTX 1070"] == 1
    assert samples["salvage_coordinator_up"][0][1] == 1


def test_a_second_agent_with_the_same_name_is_refused(pool):
    start = time.monotonic()
    out = salvage("worker", "join", pool.address, "--name", "office", "--simulate-gpus", "",
                  "--token-file", str(pool.token_file), "--metrics-port", "0", check=False, timeout=60)
    assert out.returncode != 0
    assert "belongs to another PC" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert pool.node("office")["state"] == "alive"
    assert time.monotonic() - start < 30


def test_a_killed_agent_turns_lost_then_alive_again(pool):
    pool.stop_agent("office", signal.SIGKILL)
    killed = time.monotonic()
    pool.wait_state("office", "lost", timeout=30)
    assert time.monotonic() - killed <= 30
    assert "office" not in {t["labels"]["host"] for t in json.loads(
        urllib.request.urlopen(f"http://{pool.address}/sd/agents", timeout=5).read())}
    pool.join("office", "")
    pool.wait_state("office", "alive", timeout=90)


def test_a_killed_agent_started_again_at_once_takes_its_name_back(pool):
    """A crash and a quick restart (systemd, a fast reboot): the new agent does not
    fail on its own name, and the head lets the last agent go without waiting to see
    it lost. The new agent listens on the same metrics port, as a real PC's does: it must
    not answer there for its last agent while the head looks."""
    port = pool.node("office")["metrics"].rsplit(":", 1)[1]
    before = len(pool.agent_log("office"))
    pool.stop_agent("office", signal.SIGKILL)
    pool.join("office", "", "--metrics-port", port)

    def back():
        node = pool.node("office")
        new_log = pool.agent_log("office")[before:]
        return node["state"] == "alive" and "joined as office" in new_log and node

    node = pool.wait_for(back, 60, "office to join again")
    log = pool.agent_log("office")[before:]
    assert "Error:" not in log
    assert "last agent go" in log  # it started at once, while the head still held the name
    assert node["metrics"].endswith(f":{port}")
    assert any(e["kind"] == "restarted" for e in pool.client().post("/api/hosts/events", {"host": "office"})["events"])
    assert node["last_seen"] > time.time() - 10


def test_sigterm_leaves_cleanly(pool):
    assert pool.stop_agent("mixed", signal.SIGTERM) == 0
    assert pool.node("mixed")["state"] == "left"
    assert "left the cluster" in pool.agent_log("mixed")
