"""An operator's cluster, set up as docs/operator.md says: a head whose settings come
from an env file (as its systemd unit reads /etc/salvage/head.env) listening on a
"LAN" address (127.0.0.3 stands in for it), a PC joining with the env file and token
file that deploy/install-worker.sh writes, `cluster status` asked from another
machine (an empty state dir) with --head, and `train logs -f`'s exit status."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import psutil
import pytest
from localcluster import REPO, SALVAGE, salvage, wait_for
from localcluster import test_env as salvage_env

from workers.raynode import free_ports, port_in_use

LAN = "127.0.0.3"  # a loopback address stands in for the head's LAN address
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=32", "--set", "block_size=32",
        "--set", "eval_iters=2", "--set", "log_interval=5", "--set", "eval_interval=5"]


def read_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments and blank lines skipped)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Head:
    """`salvage cluster up --foreground` with its settings from head.env, as the unit runs it."""

    def __init__(self, root: Path):
        self.root = root
        self.state = root / "var-lib-salvage"
        ray_port, self.http_port, *ports = free_ports(5, LAN)
        # Ray's own ports are picked free on loopback unless given: these are given, as a firewall would want.
        self.ray_ports = dict(zip(("NODE_MANAGER", "OBJECT_MANAGER", "DASHBOARD"), ports))
        (root / "head.env").write_text(
            "# /etc/salvage/head.env\n"
            f"SALVAGE_HOST={LAN}\nSALVAGE_PORT={ray_port}\nSALVAGE_HTTP_PORT={self.http_port}\n"
            + "".join(f"SALVAGE_{name}_PORT={port}\n" for name, port in self.ray_ports.items())
            + f"SALVAGE_STATE_DIR={self.state}\nSALVAGE_FOREGROUND=1\n")
        self.log = root / "journal.log"
        with open(self.log, "wb") as journal:
            self.proc = subprocess.Popen(
                [*SALVAGE, "cluster", "up"], stdout=journal, stderr=subprocess.STDOUT, cwd=REPO,
                env={**salvage_env(), **read_env_file((root / "head.env").read_text())}, start_new_session=True)
        wait_for(lambda: "coordinator ready" in self.journal() or self.proc.poll() is not None, 200,
                 "the head to come up")
        assert self.proc.poll() is None, self.journal()

    @property
    def address(self) -> str:
        return f"{LAN}:{self.http_port}"

    def journal(self) -> str:
        return self.log.read_text(errors="replace")

    def down(self) -> None:
        salvage("cluster", "down", "--state-dir", str(self.state), check=False)
        stop(self.proc)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    head = Head(tmp_path_factory.mktemp("operator"))
    yield head
    head.down()


@pytest.fixture(scope="module")
def pc(head):
    """A PC set up as install-worker.sh sets one up: its env file (the dry run's), the
    unit's Environment= lines, and the token in a file of its own; `worker join` runs
    with no argument, as the unit's ExecStart."""
    fingerprint = re.search(r"--ca-fingerprint (sha256:[0-9a-f]{64})", head.journal())[1]
    pc_dir = head.root / "pc"
    pc_dir.mkdir()
    token = pc_dir / "worker.token"
    shutil.copy(head.state / "token", token)  # the operator copies it over
    token.chmod(0o600)
    dry = subprocess.run(["bash", str(REPO / "deploy" / "install-worker.sh"), head.address, "--token-file", str(token),
                          "--ca-fingerprint", fingerprint, "--name", "pc-op", "--source", "/nonexistent", "--dry-run"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    env_file = dry.split("would write /etc/salvage/worker.env (mode 644, owner root):\n")[1].split("would ")[0]
    unit = (REPO / "deploy" / "systemd" / "salvage-worker.service").read_text()
    env = read_env_file("\n".join(line.removeprefix("Environment=") for line in unit.splitlines()
                                  if line.startswith("Environment=SALVAGE_")))
    env["SALVAGE_TOKEN_FILE"] = str(token)  # where the unit's /etc/salvage/worker.token is here
    env.update(read_env_file(env_file))
    # What an owner might add to worker.env (here: a simulated GPU and loopback-friendly settings).
    env.update(SALVAGE_SIMULATE_GPUS="GTX 1060:3GB:6.1", SALVAGE_METRICS_PORT="0", SALVAGE_NUM_CPUS="1",
               SALVAGE_POLL_INTERVAL="1", SALVAGE_LOG_DIR=str(pc_dir / "agent"))
    with open(pc_dir / "journal.log", "wb") as journal:
        proc = subprocess.Popen([*SALVAGE, "worker", "join"], stdout=journal, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**salvage_env(), **env}, start_new_session=True)
    yield {"token": token, "fingerprint": fingerprint, "proc": proc, "journal": pc_dir / "journal.log"}
    stop(proc)


def remote(head: Head, pc: dict, *args: str, check: bool = True, ca: bool = True) -> subprocess.CompletedProcess:
    """A command run on another machine: its own empty state dir, the head named with --head."""
    elsewhere = head.root / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return salvage(*args, "--state-dir", str(elsewhere), "--head", head.address, "--token-file", str(pc["token"]),
                   *(["--ca-fingerprint", pc["fingerprint"]] if ca else []), check=check)


def test_the_head_reads_its_settings_from_the_env_file_and_its_journal_shows_the_join_line(head):
    journal = head.journal()
    assert f"salvage worker join {head.address} --token-file TOKEN_FILE --ca-fingerprint sha256:" in journal
    assert json.loads((head.state / "head.json").read_text())["host"] == LAN
    token = (head.state / "token").read_text().strip()
    assert token not in journal
    for name, port in head.ray_ports.items():  # Ray listens where the env file says
        assert port_in_use(LAN, port), name


def test_a_pc_joins_from_its_env_files_and_status_from_elsewhere_shows_it(head, pc):
    def alive():
        if pc["proc"].poll() is not None:
            raise AssertionError(f"the agent exited: {pc['journal'].read_text()[-2000:]}")
        nodes = json.loads(remote(head, pc, "cluster", "status", "--json").stdout)["nodes"]
        return next((n for n in nodes if n["name"] == "pc-op" and n["state"] == "alive"), None)

    node = wait_for(alive, 120, "pc-op to be alive")
    assert "GTX 1060" in json.dumps(node)
    table = remote(head, pc, "worker", "list").stdout
    assert "pc-op" in table
    token = pc["token"].read_text().strip()
    for p in psutil.process_iter(["cmdline"]):  # neither the agent nor `--head` puts the token on a command line
        assert token not in " ".join(p.info["cmdline"] or [])
    # Without the fingerprint, plain HTTP reaches a TLS head: one line that says what is missing.
    proc = remote(head, pc, "cluster", "status", check=False, ca=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "--ca-fingerprint" in lines[0], proc.stderr


def tls_handshake(port: int, ca: Path, pair: tuple[Path, Path] | None) -> dict:
    """The certificate a Ray server on the LAN address shows a client (with `pair`, a mutual-TLS one)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])  # gRPC's
    if pair:
        context.load_cert_chain(*map(str, pair))
    with socket.create_connection((LAN, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=LAN) as conn:
        peer = conn.getpeercert()
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # a server that wants a client cert says so by now
        if not conn.recv(1):
            raise ConnectionError("the server closed the connection")
        return peer


def test_ray_on_the_lan_speaks_only_mutual_tls_with_the_heads_ca(head, pc):
    wait_for(lambda: "pc-op" in remote(head, pc, "worker", "list").stdout, 120, "pc-op")
    tls_dir = head.state / "tls"
    ray_port = json.loads((head.state / "head.json").read_text())["ray_port"]
    # The PC's raylet (and so every worker it starts) runs with its own certificate.
    raylets = [p for p in psutil.process_iter(["cmdline"]) if "raylet" in " ".join(p.info["cmdline"] or [])[:300]
               and p.environ().get("RAY_TLS_SERVER_CERT", "").endswith("pc-op-ray.pem")]
    assert raylets, "no raylet of pc-op runs with its certificate"
    env = raylets[0].environ()
    assert env["RAY_USE_TLS"] == "1" and Path(env["RAY_TLS_CA_CERT"]).read_text() == (tls_dir / "ca.pem").read_text()
    assert os.stat(env["RAY_TLS_SERVER_KEY"]).st_mode & 0o777 == 0o600
    # The head's GCS shows a certificate for the LAN address from the head's CA...
    peer = tls_handshake(ray_port, tls_dir / "ca.pem", (tls_dir / "ray-head.pem", tls_dir / "ray-head.key"))
    assert ("IP Address", LAN) in peer["subjectAltName"]
    # ... and lets no one in without a certificate of its own, nor in plain text.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_handshake(ray_port, tls_dir / "ca.pem", None)
    with socket.create_connection((LAN, ray_port), timeout=10) as plain:
        plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        try:
            answer = plain.recv(100)
        except ConnectionError:
            answer = b""
        assert not answer.startswith(b"\x00\x00"), answer  # no HTTP/2 frame comes back in clear


@pytest.mark.skipif(not CORPUS.exists(), reason=f"training corpus not found at {CORPUS}")
def test_train_logs_follow_exits_nonzero_unless_the_job_is_done(head, pc):
    wait_for(lambda: "pc-op" in remote(head, pc, "worker", "list").stdout, 120, "pc-op")
    state = ["--state-dir", str(head.state)]
    data = head.root / "corpus.txt"
    data.write_text(CORPUS.read_text()[:20000])
    salvage("worker", "pause", "pc-op", "--reason", "queue jobs", *state)  # so they wait, queued

    def submit(*extra: str) -> str:
        return salvage("train", "submit", *state, "--data", str(data), *TINY, *extra).stdout.split()[-1]

    failing = submit("--set", "max_iters=10")
    stopped = submit("--set", "max_iters=10")
    data.unlink()  # the PC will not find the corpus: that job fails
    salvage("train", "stop", stopped, *state)
    salvage("worker", "resume", "pc-op", *state)
    proc = remote(head, pc, "train", "logs", stopped, "-f", check=False)
    assert proc.returncode == 1 and proc.stdout.strip().splitlines()[-1] == f"job {stopped} stopped", proc.stdout
    proc = remote(head, pc, "train", "logs", failing, "-f", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(f"job {failing} failed: "), proc.stdout
    data.write_text(CORPUS.read_text()[:20000])
    done = submit("--set", "max_iters=10")
    proc = remote(head, pc, "train", "logs", done, "-f", check=False)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == f"job {done} done", proc.stdout
