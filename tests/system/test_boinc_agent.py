"""A PC's own BOINC client under its agent (`worker join --boinc`), on a live
loopback cluster, against Debian's real client started privately (its own
data dir, port and password, no project, no network; see
tests/support/boincclient.py).

The owner set BOINC's GPU mode to "always" by hand; salvage's training takes
the GPU from BOINC while it runs and gives it back with the owner's mode once
idle; science on the CPU takes BOINC's CPU the same way; an agent that leaves
gives everything back; a wrong password or a stopped client is a one-line
note while the PC goes on working for salvage; an attach from the head
reaches the client and its error comes back in one line.
"""
from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

import pytest
from boincclient import BOINC, RealClient, free_port
from localcluster import salvage

from workers.boinc import ModeState

pytestmark = pytest.mark.skipif(BOINC is None, reason="needs the real BOINC client: apt-get install boinc-client")

TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=32", "--set", "block_size=32",
        "--set", "warmup_iters=2", "--set", "eval_iters=2", "--set", "log_interval=5", "--set", "eval_interval=25"]
IDLE_S = 3


@pytest.fixture(scope="module")
def pc(local_cluster, tmp_path_factory):
    """One PC with a simulated GPU, its agent managing the real client."""
    client = RealClient(tmp_path_factory.mktemp("boinc"), free_port()).start()
    observer = client.rpc()
    observer.set_gpu_mode("always")  # the owner's own choice, so "given back" is not just the default
    local_cluster.boinc_client = client
    local_cluster.observer = observer
    local_cluster.corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    from pydoc_data.topics import topics
    local_cluster.corpus.write_text("\n".join(topics.values()))
    join(local_cluster, "boincpc", client.password_file)
    local_cluster.wait_state("boincpc", "alive", timeout=120)
    yield local_cluster
    observer.close()
    client.stop()


def join(cluster, name, password_file, port=None, gpus="GTX 1060:6GB:6.1"):
    port = port or cluster.boinc_client.port
    return cluster.join(name, gpus, "--boinc", "--boinc-rpc", f"127.0.0.1:{port}",
                        "--boinc-password-file", str(password_file), "--boinc-idle", str(IDLE_S))


def sd(cluster, *args, check=True, timeout=150):
    return salvage(*args, "--state-dir", str(cluster.state_dir), check=check, timeout=timeout)


def boinc_of(cluster, name):
    return (cluster.node(name) or {}).get("boinc")


def wait_mode(cluster, resource, want, timeout=60.0):
    """Polls the real client (as the owner's BOINC Manager would) until `want(mode)`."""
    def check():
        status = cluster.observer.get_cc_status()
        return want(status.gpu if resource == "gpu" else status.run)
    return cluster.wait_for(check, timeout, f"BOINC's {resource} mode")


def job_state(cluster, job):
    jobs = json.loads(sd(cluster, "train", "list", "--json").stdout)
    return next(j for j in jobs if j["id"] == job)["state"]


def test_joining_with_boinc_reads_the_clients_state_into_status_and_metrics(pc):
    report = pc.wait_for(lambda: (boinc_of(pc, "boincpc") or {}).get("connected") and boinc_of(pc, "boincpc"),
                         30, "the agent's first BOINC report")
    assert report["projects"] == [] and report["modes"] == {"cpu": "auto", "gpu": "always"}
    assert report["held"] == {} and report["note"] == ""
    out = sd(pc, "cluster", "status").stdout
    assert "BOINC" in out and "0 projects, 0 running; CPU and GPU lent" in out
    table = json.loads(sd(pc, "boinc", "status", "--json").stdout)
    assert [(r["host"], r["boinc"]["connected"]) for r in table["hosts"]] == [("boincpc", True)]
    assert "lends every device" in sd(pc, "boinc", "status").stdout
    metrics = urllib.request.urlopen(f"http://{pc.node('boincpc')['metrics']}/metrics", timeout=10).read().decode()
    for series in ('salvage_boinc_up 1.0', 'salvage_boinc_mode{mode="always",resource="gpu"} 1.0',
                   'salvage_boinc_owner_mode{mode="always",resource="gpu"} 1.0', 'salvage_boinc_tasks{state="running"} 0.0',
                   'salvage_boinc_held{reason="work",resource="gpu"} 0.0', 'salvage_boinc_holds_total{resource="gpu"} 0.0'):
        assert series in metrics


def claim_gone(pc, device: str, timeout: float = 60.0) -> float:
    """time.monotonic() once no live claim on `device` is left: the moment it went idle."""
    claims = pc.state_dir / "agents" / "boincpc.claims"
    deadline = time.monotonic() + timeout
    while any(p.name[0].isdigit() and p.name.endswith("." + device) for p in claims.iterdir()):
        assert time.monotonic() < deadline, f"the claim on {device} outlived its work"
        time.sleep(0.05)
    return time.monotonic()


def test_training_takes_the_gpu_from_boinc_and_the_owners_mode_returns_once_idle(pc):
    out = sd(pc, "train", "submit", "--data", str(pc.corpus), *TINY, "--set", "max_iters=100000").stdout
    job = int(out.strip().splitlines()[-1])
    submitted = time.monotonic()
    gpu = wait_mode(pc, "gpu", lambda m: m.current == "never" and m, timeout=60)
    took = time.monotonic() - submitted
    assert gpu.perm == "always"  # a temporary hold: the owner's own mode is untouched underneath
    assert "placed on boincpc (GPU 0" in sd(pc, "train", "logs", str(job)).stdout
    assert job_state(pc, job) == "running"
    held = pc.wait_for(lambda: (boinc_of(pc, "boincpc") or {}).get("held"), 20, "the hold in a heartbeat")
    assert held == {"gpu": {"reason": "work", "detail": "gpu0 busy"}}
    assert "GPU held (gpu0 busy)" in sd(pc, "cluster", "status").stdout
    assert pc.observer.get_cc_status().run.current == "auto"  # GPU work leaves BOINC the CPU
    print(f"GPU mode 'never' {took:.1f} s after the submit")
    sd(pc, "train", "stop", str(job))
    idle_from = claim_gone(pc, "gpu0")
    wait_mode(pc, "gpu", lambda m: m == ModeState("always", "always", 0.0), timeout=60)
    # Not before the device has been idle a while (less the agent's 1 s look at the claims).
    assert time.monotonic() - idle_from >= IDLE_S - 1
    assert pc.wait_for(lambda: not boinc_of(pc, "boincpc")["held"], 20, "the hold gone from the report")


def test_science_on_the_cpu_takes_boincs_cpu_until_idle(pc):
    out = sd(pc, "science", "submit", "hp-fold", "--sequence", "HPHPPHHPHPPHPHHPPHPH", "--seeds", "24",
             "--params", '{"sweeps": 50000, "replicas": 2}', "--quorum", "1").stdout
    batch = int(out.strip().splitlines()[-1])
    run = wait_mode(pc, "cpu", lambda m: m.current == "never" and m, timeout=60)
    assert run.perm == "auto"
    assert pc.observer.get_cc_status().gpu.current == "always"  # CPU work leaves BOINC the GPU
    pc.wait_for(lambda: json.loads(sd(pc, "science", "status", "--json", str(batch)).stdout)["done"], 180,
                "the batch to finish")
    wait_mode(pc, "cpu", lambda m: m == ModeState("auto", "auto", 0.0), timeout=60)


def test_an_attach_from_the_head_reaches_the_client_and_its_error_comes_back_in_one_line(pc, tmp_path):
    key = tmp_path / "key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    url = f"http://127.0.0.1:{free_port()}/nothing-here/"  # nothing listens: the client's fetch fails
    proc = sd(pc, "boinc", "attach", url, "--account-key-file", str(key), "--hosts", "boincpc", "--wait", "90",
              check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("boincpc: "))
    assert line.startswith("boincpc: failed: attach http://127.0.0.1:") and "not attached" in line, line
    assert pc.observer.get_state().projects == []  # nothing half-made left behind
    assert "0123456789abcdef" not in (pc.state_dir / "salvage.db").read_bytes().decode(errors="replace")
    bad = sd(pc, "boinc", "attach", "ftp://example.org/", "--account-key-file", str(key), check=False)
    assert bad.returncode == 1 and "url: expected a project's http(s):// URL" in bad.stderr


def test_a_wrong_password_is_a_one_line_note_and_the_pc_still_works(pc, tmp_path):
    wrong = tmp_path / "wrong.cfg"
    wrong.write_text("not-the-password\n")
    join(pc, "badpw", wrong, gpus="")
    pc.wait_state("badpw", "alive", timeout=120)
    report = pc.wait_for(lambda: (boinc_of(pc, "badpw") or {}).get("note") and boinc_of(pc, "badpw"), 30,
                         "badpw's note")
    assert not report["connected"] and "\n" not in report["note"]
    assert "password" in report["note"], report["note"]
    assert pc.node("badpw")["blocked"] is None  # it takes salvage's work all the same
    assert re.search(r"badpw.*password", sd(pc, "boinc", "status").stdout.replace("\n", " "))
    pc.stop_agent("badpw")


def test_a_stopped_client_is_a_note_and_the_agent_that_leaves_gives_the_gpu_back(pc):
    # The owner's client stops: the agent says so and carries on.
    pc.boinc_client.stop()
    report = pc.wait_for(lambda: not (boinc_of(pc, "boincpc") or {}).get("connected", True) and boinc_of(pc, "boincpc"),
                         30, "the stopped client's note")
    assert "no BOINC client answers" in report["note"] and "\n" not in report["note"]
    assert pc.node("boincpc")["state"] == "alive" and pc.node("boincpc")["blocked"] is None
    assert "not reachable: no BOINC client answers" in sd(pc, "cluster", "status").stdout
    # It comes back; salvage's work takes the GPU again; the agent leaves mid-job.
    pc.boinc_client.start()
    pc.observer.close()
    pc.wait_for(lambda: (boinc_of(pc, "boincpc") or {}).get("connected"), 30, "the client back")
    out = sd(pc, "train", "submit", "--data", str(pc.corpus), *TINY, "--set", "max_iters=100000").stdout
    job = int(out.strip().splitlines()[-1])
    wait_mode(pc, "gpu", lambda m: m.current == "never", timeout=60)
    pc.stop_agent("boincpc", signal.SIGTERM)
    assert pc.observer.get_cc_status().gpu == ModeState("always", "always", 0.0)
    sd(pc, "train", "stop", str(job), check=False)
