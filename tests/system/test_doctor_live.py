"""`salvage doctor` against a live loopback head, as an operator runs it on a PC
before joining: it passes on a healthy setup, and fails naming the fix for a GPU
the installed torch has no kernels for, a token the head refuses, and no head."""
import json
import os
import subprocess

import pytest
from localcluster import REPO, SALVAGE, LocalCluster
from localcluster import test_env as cluster_env  # not collected as a test

from workers.headclient import fingerprint
from workers.raynode import free_ports

CU126 = "sm_50,sm_60,sm_70,sm_75,sm_80,sm_86,sm_90"
NO_PASCAL = "sm_70,sm_75,sm_80,sm_86,sm_90"
HEAD_CHECKS = {"head", "token", "python", "ray", "salvage", "ray port", "clock"}


def doctor(address: str, *args: str, arch_list: str | None = None) -> subprocess.CompletedProcess:
    env = cluster_env()
    env.pop("SALVAGE_TOKEN", None)
    env["COLUMNS"] = "400"  # the table unwrapped, so a fix reads as one line
    if arch_list is not None:
        env["SALVAGE_DOCTOR_ARCH_LIST"] = arch_list
    return subprocess.run([*SALVAGE, "doctor", address, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO)


def checks(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    report = json.loads(proc.stdout)
    return {c["name"]: c for c in report["checks"]}


def test_a_healthy_pc_passes_every_check_and_exits_0(local_cluster):
    proc = doctor(local_cluster.address, "--token-file", str(local_cluster.token_file),
                  "--simulate-gpus", "RTX 3060:12GB:8.6", "--json", arch_list=CU126)
    found = checks(proc)
    assert {name: c["detail"] for name, c in found.items() if not c["ok"]} == {}
    assert proc.returncode == 0, proc.stderr
    assert HEAD_CHECKS | {"torch", "driver", "gpu0", "ram"} <= set(found)
    assert "RTX 3060" in found["gpu0"]["detail"]
    assert "the head accepts it" in found["token"]["detail"]


def test_a_pascal_card_without_sm_61_kernels_fails_naming_the_torch_build(local_cluster):
    proc = doctor(local_cluster.address, "--token-file", str(local_cluster.token_file),
                  "--simulate-gpus", "GTX 1060:3GB:6.1", arch_list=NO_PASCAL)
    assert proc.returncode == 1
    row = next(line for line in proc.stdout.splitlines() if "gpu0" in line)
    assert "FAIL" in row and "GTX 1060" in row and "sm_61" in row
    assert "pip install torch --index-url https://download.pytorch.org/whl/cu126" in row
    assert "1 of" in proc.stdout and "checks failed (gpu0)" in proc.stdout


def test_the_same_pc_as_json_fails_only_on_that_gpu(local_cluster):
    proc = doctor(local_cluster.address, "--token-file", str(local_cluster.token_file),
                  "--simulate-gpus", "GTX 1060:3GB:6.1,RTX 3060:12GB:8.6", "--json", arch_list=NO_PASCAL)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["head"] == local_cluster.address
    failing = {c["name"]: c["fix"] for c in report["checks"] if not c["ok"]}
    assert list(failing) == ["gpu0"] and "cu126" in failing["gpu0"]


def test_a_token_the_head_refuses_fails_the_token_check(local_cluster, tmp_path):
    wrong = tmp_path / "token"
    wrong.write_text("0" * 64)
    os.chmod(wrong, 0o600)
    proc = doctor(local_cluster.address, "--token-file", str(wrong), "--simulate-gpus", "", "--json")
    assert proc.returncode == 1
    found = checks(proc)
    assert not found["token"]["ok"] and "refuses" in found["token"]["detail"]
    assert found["head"]["ok"] and found["clock"]["ok"]  # the open health check and its Date header still work


def test_no_head_at_the_address_fails_the_head_check(tmp_path):
    (port,) = free_ports(1)
    proc = doctor(f"127.0.0.2:{port}", "--simulate-gpus", "", "--json")
    assert proc.returncode == 1
    found = checks(proc)
    assert not found["head"]["ok"] and "salvage cluster up" in found["head"]["fix"]
    assert not found["token"]["ok"] and "--token-file" in found["token"]["fix"]


@pytest.fixture(scope="module")
def lan_head(tmp_path_factory):
    """A head in LAN mode (HTTPS with its own CA), on loopback so the test reaches nothing else."""
    head = LocalCluster(tmp_path_factory.mktemp("lan"))
    head.up("--host", "127.0.0.2")
    yield head
    head.down()


def test_a_lan_head_is_checked_over_tls_pinned_to_its_fingerprint(lan_head):
    ca = fingerprint((lan_head.state_dir / "tls" / "ca.pem").read_text())
    token = ["--token-file", str(lan_head.token_file), "--simulate-gpus", "", "--json"]
    proc = doctor(lan_head.address, *token, "--ca-fingerprint", ca)
    found = checks(proc)
    assert {name: c["detail"] for name, c in found.items() if not c["ok"]} == {}
    assert proc.returncode == 0 and found["head"]["detail"].startswith("salvage head at https://")

    plain = checks(doctor(lan_head.address, *token))
    assert "speaks HTTPS" in plain["head"]["detail"] and "--ca-fingerprint" in plain["head"]["fix"]
    other = checks(doctor(lan_head.address, *token, "--ca-fingerprint", "sha256:" + "0" * 64))
    assert "is this the head whose join line you copied?" in other["head"]["detail"]
    assert "join line" in other["head"]["fix"]


@pytest.mark.parametrize("args, expected", [
    (["--simulate-gpus", "GTX 1060:3GB"], "Error: simulate-gpus[0]"),
    (["--ca-fingerprint", "abc"], "Error: ca-fingerprint:"),
])
def test_bad_options_are_one_line_errors(args, expected):
    proc = doctor("127.0.0.2:1", *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(expected)
