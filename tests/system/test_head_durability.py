"""The head fails closed and loses nothing, on real loopback clusters: the head's
and the PCs' own sockets listen on loopback only, a submission during a database
lock is taken once, a coordinator killed mid-batch and mid-upload comes back
with every unit and no temp file, and a full disk gets one-line answers until
space returns."""
import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from localcluster import LocalCluster, salvage

from cluster.science.credit import cobblestones
from jobs.science.apps import get_app
from workers.raynode import port_in_use

HP = {"sequence": "HHPPHPPHPPHPPHPPHPPHPPHH", "sweeps": 750, "replicas": 2}


@pytest.fixture(scope="module")
def pool(local_cluster):
    for name in ("pc1", "pc2"):
        local_cluster.join(name, "GTX 1060:3GB:6.1")  # simulated: the science runs on their CPUs
    for name in ("pc1", "pc2"):
        local_cluster.wait_state(name, "alive", timeout=120)
    return local_cluster


def sci(cluster, *args, check=True):
    return salvage("science", *args, "--state-dir", str(cluster.state_dir), check=check)


def batches(cluster) -> list[dict]:
    return json.loads(sci(cluster, "status", "--json").stdout)["batches"]


def batch_status(cluster, batch: int) -> dict:
    return json.loads(sci(cluster, "status", "--json", str(batch)).stdout)


def coordinator_pid(cluster) -> int:
    return int((cluster.state_dir / "coordinator.pid").read_text())


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket."""
    out = []
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and conn.laddr):
                    out.append((proc.name(), conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def loopback(ip: str) -> bool:
    return ip.removeprefix("::ffff:").startswith("127.") or ip == "::1"


def test_on_loopback_salvages_own_sockets_listen_on_loopback_only(pool):
    """The head's API and every agent's /metrics stay on loopback. Ray 2.60's own
    servers (gcs_server, raylets, dashboard agents, each driver's core worker) bind
    every address whatever --node-ip-address says; what guards them is Ray's token
    auth, which the head turns on even on loopback (its token always exists)."""
    own = [psutil.Process(coordinator_pid(pool)), *(psutil.Process(a.pid) for a in pool.agents.values())]
    # A Ray driver's core worker (the coordinator is one) listens in Ray's worker port range.
    sockets = [s for s in listening(own) if not 10002 <= s[2] <= 19999]
    assert len(sockets) >= 1 + len(pool.agents), sockets  # the API, and each agent's /metrics
    assert [s for s in sockets if not loopback(s[1])] == []
    gcs = [p for p in tree(coordinator_pid(pool)) if p.name() == "gcs_server"]
    assert gcs, "the head's Ray GCS is not among the coordinator's children"
    env = gcs[0].environ()
    assert env.get("RAY_AUTH_MODE") == "token" and env.get("RAY_AUTH_TOKEN") == pool.token_file.read_text().strip()


def test_a_submission_while_another_process_locks_the_database_is_taken_once(pool):
    """The lock outlasts the CLI's 20 s wait for an answer but not the head's 30 s
    wait for the lock: the CLI sends the submission again with the same key, and
    the head answers the retry with the batch the first try made."""
    before = len(batches(pool))
    locker = sqlite3.connect(pool.state_dir / "salvage.db", isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(25.0, locker.execute, ("COMMIT",))
    release.start()
    try:
        proc = sci(pool, "submit", "noop", "--grid", "x=1,2,3", check=False)
    finally:
        release.join()
        locker.close()
    after = batches(pool)
    if proc.returncode == 0:
        assert len(after) == before + 1, (proc.stdout, after)
        assert int(proc.stdout.strip().splitlines()[-1]) == after[-1]["batch"]
    else:  # refused: then nothing of it may be stored
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert len(after) == before, (proc.stderr, after)
    assert proc.returncode == 0, proc.stderr  # and with this lock it should have got through


def upload_headers(cluster, job: int, length: int) -> bytes:
    token = cluster.token_file.read_text().strip()
    return (f"POST /api/train/checkpoint?job={job}&attempt=0 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def leftovers(state_dir: Path) -> list[Path]:
    """Temp files the head left in its state dir (the agents' own dirs aside)."""
    return [p for p in state_dir.rglob("*") if p.is_file() and (".tmp" in p.name or p.name.startswith(".ckpt."))
            and "agents" not in p.relative_to(state_dir).parts]


def test_a_coordinator_killed_mid_batch_and_mid_upload_comes_back_with_everything(pool, tmp_path):
    # A training job that fits no GPU here (so it never runs) takes a good checkpoint.
    out = salvage("train", "submit", "--state-dir", str(pool.state_dir), "--set", "n_layer=24", "--set",
                  "n_embd=2048", "--set", "n_head=16").stdout
    job = int(out.strip().splitlines()[-1])
    salvage("train", "stop", "--state-dir", str(pool.state_dir), str(job))
    good = os.urandom(300_000)
    (tmp_path / "good.pt").write_bytes(good)
    pool.client().upload(f"/api/train/checkpoint?job={job}&attempt=0", tmp_path / "good.pt")
    batch = int(sci(pool, "submit", "hp-fold", "--sequence", HP["sequence"], "--seeds", "80", "--params",
                    json.dumps({"sweeps": HP["sweeps"], "replicas": HP["replicas"]}), "--quorum", "2")
                .stdout.strip().splitlines()[-1])
    pool.wait_for(lambda: batch_status(pool, batch)["wus"]["done"] > 0, 120, "some units done")
    # A second checkpoint is half sent when the coordinator dies.
    upload = socket.create_connection(("127.0.0.2", pool.http_port), timeout=10)
    upload.sendall(upload_headers(pool, job, 8 * 2**20) + os.urandom(2**20))
    job_dir = pool.state_dir / "jobs" / f"train-{job}"
    pool.wait_for(lambda: [p for p in job_dir.iterdir() if p.name.startswith(".ckpt.")], 30, "the upload's temp file")
    pid = coordinator_pid(pool)
    os.kill(pid, signal.SIGKILL)
    pool.wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 30,
                  "the coordinator to die")
    upload.close()
    assert leftovers(pool.state_dir), "the kill left no temp file: the test did not catch the upload"
    # Its Ray head gets the parent-death signal and drains; `up` needs the port back.
    pool.wait_for(lambda: not port_in_use("127.0.0.2", pool.ray_port), 90, "the old Ray head to let its port go")
    pool.up()
    for name in ("pc1", "pc2"):
        pool.wait_state(name, "alive", timeout=120)
    s = pool.wait_for(lambda: (st := batch_status(pool, batch))["done"] and st, 300, f"batch {batch} to finish")
    assert s["wus"]["done"] == 80 and s["wus"]["error"] == 0, s
    assert pool.client().post("/api/science/check", {})["violations"] == []
    lines = [json.loads(line) for line in sci(pool, "results", str(batch)).stdout.splitlines()]
    assert len(lines) == 80 == len({line["wu"] for line in lines})  # every unit, once
    # Credit: exactly one grant per valid result, none granted twice across the kill.
    per_result = cobblestones(get_app("hp-fold").flops({**HP, "seed": 0}))
    assert sum(s["credit_by_host"].values()) == pytest.approx(s["results"]["valid"] * per_result)
    assert leftovers(pool.state_dir) == []
    back = tmp_path / "back.pt"
    assert pool.client().download(f"/api/train/checkpoint?job={job}", back) and back.read_bytes() == good


@pytest.fixture
def small_disk(tmp_path):
    """A state dir on a 64 MB tmpfs of its own, for filling."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root")
    cluster = LocalCluster(mount / "state")
    try:
        yield cluster, mount
    finally:
        cluster.down()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> Path:
    """Write until the disk is full; returns the filler."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 2**20
        try:
            while True:
                f.write(chunk)  # a short write when little is left, then ENOSPC
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    return filler


# Big enough to outgrow the database's write-ahead log (SQLite reuses its space), so
# that storing it needs new space on the disk.
BIG = ["hp-fold", "--sequence", "HP" * 100, "--seeds", "20000"]


def test_a_full_disk_gets_one_line_answers_and_the_head_comes_back_when_space_does(small_disk):
    cluster, mount = small_disk
    cluster.up()
    first = int(sci(cluster, "submit", "noop", "--grid", "x=" + ",".join(map(str, range(30)))).stdout.split()[-1])
    pid = coordinator_pid(cluster)
    threads = psutil.Process(pid).num_threads()
    filler = fill(mount)
    refused = sci(cluster, "submit", *BIG, check=False)
    assert refused.returncode != 0 and "disk" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    time.sleep(6)  # a pass of the science loop's sweep, which writes, meets the full disk too
    assert [b["batch"] for b in batches(cluster)] == [first]  # reads still answer; nothing half-stored
    assert cluster.client().get("/api/health") == {"ok": True}
    assert psutil.Process(pid).is_running() and psutil.Process(pid).num_threads() >= threads
    filler.unlink()
    big = int(sci(cluster, "submit", *BIG).stdout.split()[-1])  # the same submission, once space is back
    sci(cluster, "cancel", str(big))  # (20,000 folds are more than this test wants to run)
    second = int(sci(cluster, "submit", "noop", "--grid", "x=7,8").stdout.split()[-1])
    assert [b["batch"] for b in batches(cluster)] == [first, big, second]
    cluster.join("pc1", "")
    cluster.join("pc2", "")
    for batch in (first, second):
        s = cluster.wait_for(lambda b=batch: (st := batch_status(cluster, b))["done"] and st, 180, f"batch {batch}")
        assert s["wus"]["error"] == 0, s
    assert cluster.client().post("/api/science/check", {})["violations"] == []
    assert coordinator_pid(cluster) == pid  # the same coordinator throughout
