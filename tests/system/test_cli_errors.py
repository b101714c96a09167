"""Bad input gets a one-line error naming the problem: never a hang or a traceback."""
import os
import re
import socket
import time

import psutil
import pytest
from localcluster import LocalCluster, salvage

from workers.raynode import free_ports


def one_line_error(proc) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def a_token_file(tmp_path) -> str:
    path = tmp_path / "token"
    path.write_text("x" * 64)
    path.chmod(0o600)
    return str(path)


def test_join_to_an_address_with_no_head_fails_within_10_s(tmp_path):
    (port,) = free_ports(1)
    start = time.monotonic()
    proc = salvage("worker", "join", f"127.0.0.2:{port}", "--simulate-gpus", "", "--token-file",
                   a_token_file(tmp_path), check=False, timeout=30)
    assert time.monotonic() - start < 15  # 10 s of trying plus interpreter start-up
    assert "no salvage head answers" in one_line_error(proc)


def test_malformed_simulate_gpus_is_refused_before_joining():
    proc = salvage("worker", "join", "127.0.0.2:1", "--simulate-gpus", "RTX 3060:12GB", check=False)
    assert "simulate-gpus[0]" in one_line_error(proc)


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_a_duty_cycle_outside_0_to_1_is_refused_before_joining(fraction):
    proc = salvage("worker", "join", "127.0.0.2:1", "--duty-cycle", fraction, check=False)
    assert one_line_error(proc).startswith("Error: duty-cycle: expected a fraction in (0, 1]")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_state_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    proc = salvage("cluster", "up", "--state-dir", str(ro / "state"), check=False)
    assert "state-dir" in one_line_error(proc)


def test_state_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    proc = salvage("cluster", "up", "--state-dir", str(f / "state"), check=False)
    assert one_line_error(proc).startswith("Error: state-dir: cannot write to")


def test_port_already_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = salvage("cluster", "up", "--state-dir", str(tmp_path / "s"), "--port", str(port), check=False)
    assert f"port: 127.0.0.2:{port} is already in use" in one_line_error(proc)
    assert not (tmp_path / "s" / "coordinator.pid").exists()


def test_status_and_down_when_nothing_runs(tmp_path):
    proc = salvage("cluster", "status", "--state-dir", str(tmp_path), check=False)
    assert "no cluster is running" in one_line_error(proc)
    down = salvage("cluster", "down", "--state-dir", str(tmp_path))
    assert "nothing to stop" in down.stdout


def test_second_up_says_so_and_changes_nothing(local_cluster):
    pid_before = (local_cluster.state_dir / "coordinator.pid").read_text()
    again = local_cluster.up()
    assert "already running" in again.stdout
    assert (local_cluster.state_dir / "coordinator.pid").read_text() == pid_before
    assert local_cluster.status()["nodes"] == []


def test_down_is_idempotent_and_keeps_state(tmp_path):
    cluster = LocalCluster(tmp_path / "state")
    cluster.up()
    cluster.down()
    assert (tmp_path / "state" / "salvage.db").exists()
    assert "nothing to stop" in salvage("cluster", "down", "--state-dir", str(tmp_path / "state")).stdout


@pytest.mark.parametrize("content, mode, message", [
    ("", 0o600, "must hold one word of at least 32"),
    ("short", 0o600, "must hold one word of at least 32"),
    ("y" * 64, 0o644, "readable by other users"),
])
def test_a_lan_head_refuses_an_empty_short_or_readable_token(tmp_path, content, mode, message):
    state = tmp_path / "lan"
    state.mkdir(mode=0o700)
    (state / "token").write_text(content)
    (state / "token").chmod(mode)
    cluster = LocalCluster(state)
    proc = salvage("cluster", "up", "--state-dir", str(state), "--host", "127.0.0.2", "--port",
                   str(cluster.ray_port), "--http-port", str(cluster.http_port), check=False)
    assert message in one_line_error(proc)
    assert not (state / "coordinator.pid").exists()


def test_a_lan_head_speaks_tls_needs_its_token_and_never_shows_it(tmp_path):
    """`--host` makes the head's CA; the join line carries its fingerprint and a token
    file, never the token; without them a PC is refused with a clear reason."""
    cluster = LocalCluster(tmp_path / "lan")
    out = cluster.up("--host", "127.0.0.2").stdout
    try:
        token = (tmp_path / "lan" / "token").read_text().strip()
        assert token not in out and "--token-file" in out
        fingerprint = re.search(r"--ca-fingerprint (sha256:[0-9a-f]{64})", out)[1]
        assert oct((tmp_path / "lan" / "token").stat().st_mode & 0o777) == "0o600"
        assert oct((tmp_path / "lan").stat().st_mode & 0o777) == "0o700"
        proc = salvage("worker", "join", cluster.address, "--simulate-gpus", "", "--token-file",
                       a_token_file(tmp_path), check=False, timeout=60)
        assert "ca-fingerprint" in one_line_error(proc)  # plain HTTP gets nowhere
        proc = salvage("worker", "join", cluster.address, "--simulate-gpus", "", "--token-file",
                       a_token_file(tmp_path), "--ca-fingerprint", "sha256:" + "0" * 64, check=False, timeout=60)
        assert "ca-fingerprint: the head" in one_line_error(proc)
        proc = salvage("worker", "join", cluster.address, "--simulate-gpus", "", "--token-file",
                       a_token_file(tmp_path), "--ca-fingerprint", fingerprint, check=False, timeout=60)
        assert "token" in one_line_error(proc)  # the right head, the wrong token
        cluster.join("lan-pc", "", "--ca-fingerprint", fingerprint)
        cluster.wait_state("lan-pc", "alive", timeout=90)
        for p in psutil.process_iter(["cmdline"]):
            assert token not in " ".join(p.info["cmdline"] or []), p.info["cmdline"]
        # A second `up` keeps the same token and CA.
        assert fingerprint in cluster.up("--host", "127.0.0.2").stdout
    finally:
        cluster.down()


def test_up_with_prometheus_scrapes_the_head(tmp_path):
    """`cluster up --prometheus`: a real Prometheus with the deploy config,
    scraping this head, stopped again by `down`."""
    import json
    import shutil
    import urllib.request

    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    cluster = LocalCluster(tmp_path / "prom")
    (prom_port,) = free_ports(1)
    (am_port,) = free_ports(1, "127.0.0.1")
    out = cluster.up("--alertmanager", "--alertmanager-port", str(am_port), "--alert-webhook",
                     "http://127.0.0.1:9/alerts", "--prometheus-port", str(prom_port)).stdout
    try:
        assert f"Prometheus on http://127.0.0.2:{prom_port}" in out
        assert f"Alertmanager on http://127.0.0.1:{am_port}" in out

        def alertmanager_known():  # Prometheus sends its alerts to the Alertmanager `up` started
            url = f"http://127.0.0.2:{prom_port}/api/v1/alertmanagers"
            active = json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["activeAlertmanagers"]
            return any(f"127.0.0.1:{am_port}" in a["url"] for a in active)

        cluster.wait_for(lambda: _quiet(alertmanager_known), 60, "Prometheus to find Alertmanager")

        def head_target_up():
            url = f"http://127.0.0.2:{prom_port}/api/v1/targets"
            targets = json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["activeTargets"]
            return any(t["labels"]["job"] == "salvage-head" and t["health"] == "up" and
                       t["scrapeUrl"].startswith(f"http://{cluster.address}") for t in targets)

        cluster.wait_for(lambda: _quiet(head_target_up), 60, "Prometheus to scrape the head")
    finally:
        cluster.down()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.2", prom_port)) != 0  # `down` stopped it too
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", am_port)) != 0


def _quiet(check):
    try:
        return check()
    except OSError:
        return False


def test_a_ray_node_that_loses_a_port_while_joining_is_started_again(local_cluster):
    # Another process holds the port Ray's metrics exporter is given until the first start has failed.
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        s.listen()
        local_cluster.join("taken", "", "--metrics-export-port", str(s.getsockname()[1]))
        local_cluster.wait_for(lambda: "starting it again (1/2)" in local_cluster.agent_log("taken"), 120,
                               "the first Ray node to exit and the agent to say so")
    local_cluster.wait_state("taken", "alive", timeout=120)
    assert "ray: the Ray node exited while joining" in local_cluster.agent_log("taken")
