"""Volunteer machines stay their owners', on a live loopback cluster whose
simulated GPUs are driven through their live sensor files: a hot GPU pauses
within one poll and resumes only below the lower mark; a closed time window
pauses a PC; a GPU that falls off the bus sends its training elsewhere and
comes back after its health check; an operator drains, pauses and resumes
PCs; the owner's input (the access time of a policy's idle device, here a
temp file) pauses a PC and its science steps aside until the owner has been
away the policy's idle time; training preempts a pool full of long science
units, and every unit still ends valid with its credit counted once."""
import json
import os
import re
import threading
import time
from contextlib import contextmanager

import pytest
from localcluster import salvage

from workers.idle import logind_idle_since

IDLE_MINUTES = 0.1  # pc-a's owner counts as away after 6 s without input

TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=32", "--set", "block_size=32",
        "--set", "warmup_iters=2", "--set", "eval_iters=2", "--set", "log_interval=5", "--set", "eval_interval=25"]


def spec(temperature: float, lost: bool = False) -> str:
    return json.dumps([{"name": "GTX 1070", "vram": "8GB", "cc": "6.1", "temperature_c": temperature,
                        "lost": lost, "gflops": 5000}])


@pytest.fixture(scope="module")
def pool(local_cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("owners")
    local_cluster.work = work
    local_cluster.gpu_file = work / "gpu.json"
    local_cluster.gpu_file.write_text(spec(50))
    local_cluster.policy_file = work / "window.toml"
    local_cluster.policy_file.write_text('[windows]\nevery_day = "all"\n')
    local_cluster.corpus = work / "corpus.txt"
    from pydoc_data.topics import topics
    local_cluster.corpus.write_text("\n".join(topics.values()))
    local_cluster.join("gpupc", f"@{local_cluster.gpu_file}",
                       "--policy", str(_heat_policy(work)))
    local_cluster.join("windowpc", "", "--policy", str(local_cluster.policy_file))
    local_cluster.keyboard = work / "keyboard"  # pc-a's input device, as its owner's policy names it
    local_cluster.keyboard.write_text("")
    os.utime(local_cluster.keyboard, (time.time() - 3600, time.time() - 7200))  # nobody typed for an hour
    idle_policy = work / "idle.toml"
    idle_policy.write_text(f'[idle]\nminutes = {IDLE_MINUTES}\ndevices = ["{local_cluster.keyboard}"]\n')
    local_cluster.join("pc-a", "", "--policy", str(idle_policy))
    for name in ("gpupc", "windowpc", "pc-a"):
        local_cluster.wait_state(name, "alive", timeout=120)
    return local_cluster


def _heat_policy(work):
    path = work / "heat.toml"
    path.write_text("[gpu]\npause_above_c = 83\nresume_below_c = 75\n")
    return path


def node(pool, name):
    return pool.node(name)


def gpu_pause(pool, name):
    return (node(pool, name).get("paused") or {}).get("gpus", {}).get("0")


def sd(pool, *args, check=True):
    return salvage(*args, "--state-dir", str(pool.state_dir), check=check)


def test_a_hot_gpu_pauses_within_a_poll_and_resumes_only_below_the_lower_mark(pool):
    pool.gpu_file.write_text(spec(90))
    started = time.monotonic()
    pool.wait_for(lambda: gpu_pause(pool, "gpupc") == "gpu_hot", 15, "the hot GPU to pause")
    assert time.monotonic() - started < 8  # a 1 s poll, then the heartbeat at once
    status = sd(pool, "cluster", "status").stdout
    assert "paused: gpu_hot" in status
    pool.gpu_file.write_text(spec(79))  # between the marks: still paused
    time.sleep(4)
    assert gpu_pause(pool, "gpupc") == "gpu_hot"
    pool.gpu_file.write_text(spec(70))
    pool.wait_for(lambda: gpu_pause(pool, "gpupc") is None, 15, "the GPU to resume below 75 °C")
    events = pool.client().post("/api/hosts/events", {"host": "gpupc"})["events"]
    assert any("GPU 0 gpu_hot" in e["detail"] for e in events)


def test_a_closed_time_window_pauses_the_pc_and_opening_it_resumes(pool):
    pool.policy_file.write_text('[windows]\nevery_day = "none"\n')
    pool.wait_for(lambda: (node(pool, "windowpc").get("paused") or {}).get("host") == "time_window", 15,
                  "the PC to pause outside its window")
    assert node(pool, "windowpc")["blocked"] == "paused (time_window)"
    pool.policy_file.write_text('[windows]\nevery_day = "all"\n')
    pool.wait_for(lambda: not (node(pool, "windowpc").get("paused") or {}).get("host"), 15,
                  "the PC to resume in its window")


def job_log(pool, job):
    return sd(pool, "train", "logs", str(job)).stdout


def test_a_lost_gpu_sends_its_training_elsewhere_and_comes_back_after_its_check(pool):
    out = sd(pool, "train", "submit", "--data", str(pool.corpus), *TINY, "--set", "max_iters=100000").stdout
    job = int(out.strip().splitlines()[-1])
    pool.wait_for(lambda: "placed on gpupc (GPU 0" in job_log(pool, job), 60, "the job on the fastest GPU")
    pool.wait_for(lambda: re.search(r"iter \d+", job_log(pool, job)), 90, "the job to train")
    pool.gpu_file.write_text(spec(50, lost=True))
    pool.wait_for(lambda: "requeued" in job_log(pool, job), 60, "the job to leave the lost GPU")
    pool.wait_for(lambda: re.search(r"placed on (windowpc|pc-a)", job_log(pool, job)), 60,
                  "the job to go on elsewhere")
    gpu = node(pool, "gpupc")["gpus"][0]
    assert gpu["lost"] and "lost" in (node(pool, "gpupc").get("health") or {}).get("gpus", {}).get("0", "")
    pool.gpu_file.write_text(spec(50))  # back on the bus: its check passes after the backoff
    pool.wait_for(lambda: not (node(pool, "gpupc").get("health") or {}).get("gpus"), 60,
                  "the GPU's health check to pass")
    sd(pool, "train", "stop", str(job))


def test_drain_moves_work_off_a_pc_and_resume_brings_it_back(pool):
    out = sd(pool, "worker", "drain", "pc-a", "--reason", "new fan").stdout
    assert "drained" in out
    assert node(pool, "pc-a")["blocked"] == "drained by the operator: new fan"
    batch = int(sd(pool, "science", "submit", "noop", "--grid", "x=" + ",".join(map(str, range(60))),
                   "--quorum", "1").stdout.strip().splitlines()[-1])
    pool.wait_for(lambda: json.loads(sd(pool, "science", "status", str(batch), "--json").stdout)["done"], 120,
                  "the batch to finish on the other PCs")
    hosts = {h["host"] for h in json.loads(sd(pool, "science", "status", "--json").stdout)["hosts"]
             if h["app"] == "noop"}
    assert "pc-a" not in hosts  # a drained PC got none of it
    sd(pool, "worker", "resume", "pc-a")
    assert node(pool, "pc-a")["blocked"] is None
    pool.wait_for(lambda: "operator resumed" in sd(pool, "worker", "list").stdout, 10, "the resume in the list")


def test_an_operator_pause_stops_the_work_on_that_pc_now(pool):
    sd(pool, "worker", "pause", "windowpc", "--reason", "owner is gaming")
    pool.wait_for(lambda: (node(pool, "windowpc").get("paused") or {}).get("host") == "operator", 15,
                  "the agent to pause")
    assert "paused by the operator: owner is gaming" in sd(pool, "worker", "list").stdout
    with pytest.raises(AssertionError):  # a bad GPU index is a one-line error
        sd(pool, "worker", "pause", "windowpc", "--gpu", "3")
    sd(pool, "worker", "resume", "windowpc")
    pool.wait_for(lambda: not (node(pool, "windowpc").get("paused") or {}).get("host"), 15, "the agent to resume")


@contextmanager
def owner_typing(keyboard):
    """The owner presses a key every half second (a read moves the device's access
    time, not its modification time) until the block ends; yields the list whose
    last item is when the last key was pressed."""
    pressed = []
    stop = threading.Event()

    def type_keys():
        while True:
            pressed.append(time.time())
            os.utime(keyboard, (pressed[-1], os.stat(keyboard).st_mtime))
            if stop.wait(0.5):
                return

    typist = threading.Thread(target=type_keys, daemon=True)
    typist.start()
    try:
        yield pressed
    finally:
        stop.set()
        typist.join()


def science_on(pool, name):
    return any("science" in r for r in node(pool, name)["running"])


def test_owner_input_pauses_the_pc_its_science_steps_aside_and_it_resumes_once_idle(pool):
    if logind_idle_since() is not None:
        pytest.skip("logind keeps a session on this machine: its input would count as the owner's too")
    others = ("gpupc", "windowpc")
    for name in others:  # the batch's science can only run on pc-a
        sd(pool, "worker", "drain", name, "--reason", "the owner-input test needs pc-a's science")
    try:
        batch = int(sd(pool, "science", "submit", "hp-fold", "--sequence", "HPHPPHHPHPPHPHHPPHPH", "--seeds", "16",
                       "--params", '{"sweeps": 500000, "replicas": 2}', "--quorum", "1").stdout.strip().splitlines()[-1])
        pool.wait_for(lambda: science_on(pool, "pc-a"), 90, "science on pc-a")
        with owner_typing(pool.keyboard) as pressed:
            pool.wait_for(lambda: (node(pool, "pc-a").get("paused") or {}).get("host") == "owner_input", 15,
                          "pc-a to pause for its owner")
            assert node(pool, "pc-a")["blocked"] == "paused (owner_input)"
            pool.wait_for(lambda: not science_on(pool, "pc-a"), 30, "pc-a's science to step aside")
        pool.wait_for(lambda: not (node(pool, "pc-a").get("paused") or {}).get("host"), 30,
                      "pc-a to resume once its owner is away")
        resumed = next(e for e in pool.client().post("/api/hosts/events", {"host": "pc-a"})["events"]
                       if e["kind"] == "resumed")
        assert resumed["t"] - pressed[-1] >= IDLE_MINUTES * 60  # not before the owner was away the idle time
        pool.wait_for(lambda: science_on(pool, "pc-a"), 60, "science back on pc-a")
        sd(pool, "science", "cancel", str(batch))
        assert pool.client().post("/api/science/check", {})["violations"] == []
    finally:
        for name in others:
            sd(pool, "worker", "resume", name)


def test_training_preempts_long_science_and_every_unit_ends_valid_once(pool):
    batch = int(sd(pool, "science", "submit", "hp-fold", "--sequence", "HPHPPHHPHPPHPHHPPHPH", "--seeds", "48",
                   "--params", '{"sweeps": 500000, "replicas": 2}', "--quorum", "1").stdout.strip().splitlines()[-1])
    # The GPU PC is the fastest: training will want it, and science holds it.
    pool.wait_for(lambda: any("science" in r for r in node(pool, "gpupc")["running"]), 60, "science on the GPU PC")
    submitted = time.monotonic()
    out = sd(pool, "train", "submit", "--data", str(pool.corpus), *TINY, "--set", "max_iters=60").stdout
    job = int(out.strip().splitlines()[-1])
    pool.wait_for(lambda: re.search(r"iter \d+/", job_log(pool, job)), 120, "the job to train")
    took = time.monotonic() - submitted
    assert took < 60, f"training waited {took:.0f} s for science to step aside"
    assert "science steps aside" in json.dumps(pool.client().post("/api/hosts/events", {})["events"])
    sd(pool, "science", "cancel", str(batch))  # the rest is not needed for the test
    status = json.loads(sd(pool, "science", "status", str(batch), "--json").stdout)
    assert status["done"] and status["wus"]["error"] == status["wu_errors"].get("cancelled", 0)
    assert pool.client().post("/api/science/check", {})["violations"] == []
    lines = [json.loads(x) for x in sd(pool, "science", "results", str(batch)).stdout.splitlines()]
    assert len(lines) == len({x["wu"] for x in lines}) == status["wus"]["done"]  # each once
