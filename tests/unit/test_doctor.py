"""`salvage doctor`'s checks as pure functions: each passes on a good fact and
fails on a bad one with a fix that names what to do."""
import os
import subprocess
import sys

import pytest

from cluster.head.state import MIN_TOKEN_CHARS
from workers.doctor import (
    GIB,
    MIN_AVAILABLE_RAM,
    MIN_FREE_DISK,
    TorchFacts,
    check_clock,
    check_cuda_devices,
    check_disk,
    check_driver,
    check_gpu,
    check_python,
    check_ram,
    check_ray,
    check_salvage,
    check_token_accepted,
    check_token_file,
    check_torch,
    code_runs,
    failure_reason,
    probe_gpus,
    unusable_gpus,
)
from workers.gpus import GpuReader
from workers.simnvml import SimulatedNvml

NO_PASCAL = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]  # what CUDA 12.9+ builds of torch ship, roughly
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
TOKEN = "f" * 64


def gpus(spec: str):
    reader = GpuReader(SimulatedNvml(spec))
    reader.start()
    return reader.probe()


# --- GPUs against torch's architectures ---

def test_a_pascal_card_fails_against_a_build_without_sm_61_and_names_the_build_to_install():
    (gtx,) = gpus("GTX 1060:3GB:6.1")
    check = check_gpu(gtx, NO_PASCAL)
    assert not check.ok and check.name == "gpu0"
    assert "GTX 1060" in check.detail and "sm_61" in check.detail
    assert "https://download.pytorch.org/whl/cu126" in check.fix and "sm_61" in check.fix and "525" in check.fix


def test_a_pascal_card_passes_against_the_cuda_12_6_build():
    (gtx,) = gpus("GTX 1060:3GB:6.1")
    check = check_gpu(gtx, CU126)
    assert check.ok and check.fix == ""
    assert "sm_60" in check.detail  # sm_60 kernels run on 6.1: same major, older minor


def test_an_ampere_card_passes_against_a_modern_build():
    (rtx,) = gpus("RTX 3060:12GB:8.6")
    assert check_gpu(rtx, NO_PASCAL).ok


def test_unusable_gpus_names_only_the_cards_torch_cannot_run():
    found = unusable_gpus(gpus("GTX 1060:3GB:6.1,RTX 3060:12GB:8.6"), NO_PASCAL)
    assert [(c.name, c.ok) for c in found] == [("gpu0", False)]
    assert "GTX 1060" in found[0].detail and "cu126" in found[0].fix
    assert unusable_gpus(gpus("RTX 3060:12GB:8.6"), NO_PASCAL) == []


def test_a_cpu_only_torch_leaves_every_gpu_unusable_and_none_means_torch_is_broken():
    (rtx,) = gpus("RTX 3060:12GB:8.6")
    cpu_only = check_gpu(rtx, [])
    assert not cpu_only.ok and "CPU-only" in cpu_only.detail and "--index-url" in cpu_only.fix
    broken = check_gpu(rtx, None)
    assert not broken.ok and "torch" in broken.fix


def test_a_card_no_torch_build_supports_says_so():
    (kepler,) = gpus("Tesla K80:12GB:3.7")
    check = check_gpu(kepler, CU126)
    assert not check.ok and "no current torch build" in check.fix and "--index-url" not in check.fix


def test_a_blackwell_card_is_sent_to_a_newer_build():
    (card,) = gpus("RTX 5090:32GB:12.0")
    check = check_gpu(card, CU126)
    assert not check.ok and "cu129" in check.fix


@pytest.mark.parametrize("code, cc, runs", [
    ("sm_60", (6, 1), True), ("sm_61", (6, 0), False), ("sm_70", (8, 0), False),
    ("compute_70", (8, 6), True), ("compute_90", (8, 6), False), ("sm_90a", (9, 0), True),
    ("sm_80", (8, 7), False), ("sm_120", (12, 0), True), ("sm_100", (12, 0), False), ("bogus", (8, 6), False),
])
def test_which_build_target_runs_on_which_card(code, cc, runs):
    assert code_runs(code, cc) is runs


def test_gpus_are_probed_through_the_agents_reader():
    found, driver, error = probe_gpus("GTX 1060:3GB:6.1")
    assert [(g.name, g.compute_capability) for g in found] == [("GTX 1060", "6.1")]
    assert (driver, error) == ("simulated", None)
    assert probe_gpus("") == ([], "simulated", None)


# --- torch, driver ---

def test_torch_absent_is_a_failed_check_with_the_install_line():
    check = check_torch(TorchFacts(error="ModuleNotFoundError: No module named 'torch'"))
    assert not check.ok and check.detail == "torch is not installed" and "pip install torch" in check.fix
    assert check_torch(TorchFacts(version="2.13.0", cuda="12.6", arch_list=tuple(CU126))).ok


def test_torch_that_sees_fewer_gpus_than_nvml_fails():
    two = gpus("GTX 1060:3GB:6.1,RTX 3060:12GB:8.6")
    blind = check_cuda_devices(TorchFacts(version="2.13.0", cuda="12.6", arch_list=(), device_count=0), two)
    assert blind is not None and not blind.ok and "0 of the 2" in blind.detail
    assert check_cuda_devices(TorchFacts(version="2.13.0", cuda="12.6", device_count=2), two).ok
    assert check_cuda_devices(TorchFacts(version="2.13.0+cpu"), two) is None  # the GPU checks say it


@pytest.mark.parametrize("driver, cuda, ok", [
    ("535.183.01", "12.6", True), ("470.256.02", "12.6", False), ("470.256.02", "11.8", True),
    ("550.54.14", "13.0", False), ("470.256.02", None, False), ("simulated", None, True),
])
def test_driver_against_torchs_cuda(driver, cuda, ok):
    check = check_driver(driver, None, True, cuda)
    assert check.ok is ok
    if not ok:
        assert "update the NVIDIA driver" in check.fix


def test_no_driver_is_fine_without_an_nvidia_card_and_a_failure_with_one():
    assert check_driver(None, "NVML Shared Library Not Found", False, None).ok
    check = check_driver(None, "NVML Shared Library Not Found", True, None)
    assert not check.ok and "nvidia-driver" in check.fix


# --- disk, memory ---

def test_disk_thresholds():
    assert check_disk("/home", MIN_FREE_DISK, 50 * GIB).ok
    low = check_disk("/home", MIN_FREE_DISK - 1, 50 * GIB)
    assert not low.ok and low.name == "disk /home" and "free space on /home" in low.fix
    full = check_disk("/tmp", 10 * GIB, 1000 * GIB)  # 99% full: Ray stops storing objects
    assert not full.ok and "95%" in full.detail


def test_ram_threshold():
    assert check_ram(MIN_AVAILABLE_RAM, 8 * GIB).ok
    low = check_ram(MIN_AVAILABLE_RAM - 1, 4 * GIB)
    assert not low.ok and "GiB available of 4.0 GiB" in low.detail and low.fix


# --- the clock, versions ---

@pytest.mark.parametrize("offset, uncertainty, ok", [
    (0.3, 0.01, True), (-1.9, 0.01, True), (2.5, 0.01, False), (-30.0, 0.5, False), (2.4, 0.5, True),
])
def test_clock_offset(offset, uncertainty, ok):
    check = check_clock(offset, uncertainty)
    assert check.ok is ok
    assert ("behind" if offset > 0 else "ahead of") in check.detail
    if not ok:
        assert "timedatectl set-ntp true" in check.fix


def test_version_mismatches_fail_with_the_version_to_install():
    assert check_python("3.11.7", "3.11.7").ok
    patch = check_python("3.11.9", "3.11.7")
    assert not patch.ok and "3.11.7" in patch.fix
    assert check_python("3.11.9", "3.11.7", match="minor").ok  # RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor
    assert not check_python("3.12.1", "3.11.7", match="minor").ok
    assert check_ray("2.60.0", "2.60.0").ok
    ray = check_ray("2.49.1", "2.60.0")
    assert not ray.ok and ray.fix == "pip install 'ray[default]==2.60.0'"
    assert "not installed" in check_ray(None, "2.60.0").detail
    assert not check_salvage("0.0.9", "0.1.0").ok and check_salvage("0.1.0", "0.1.0").ok


# --- the token ---

def write_token(path, text: str, mode: int = 0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_good_token_file_passes_and_gives_the_token(tmp_path):
    check, token = check_token_file(write_token(tmp_path / "token", TOKEN + "\n"), MIN_TOKEN_CHARS)
    assert check.ok and token == TOKEN


def test_a_missing_token_file(tmp_path):
    check, token = check_token_file(tmp_path / "nope", MIN_TOKEN_CHARS)
    assert not check.ok and token is None
    assert "cannot read" in check.detail and "STATE_DIR/token" in check.fix


def test_a_token_file_others_can_read(tmp_path):
    path = write_token(tmp_path / "token", TOKEN, 0o644)
    check, token = check_token_file(path, MIN_TOKEN_CHARS)
    assert not check.ok and token is None
    assert "mode 644" in check.detail and check.fix == f"chmod 600 {path}"


def test_a_short_token(tmp_path):
    check, token = check_token_file(write_token(tmp_path / "token", "abc123"), MIN_TOKEN_CHARS)
    assert not check.ok and token is None
    assert "6 characters" in check.detail and f"at least {MIN_TOKEN_CHARS}" in check.detail


def test_the_heads_word_on_the_token(tmp_path):
    local, _ = check_token_file(write_token(tmp_path / "token", TOKEN), MIN_TOKEN_CHARS)
    assert check_token_accepted(local, 200).ok
    refused = check_token_accepted(local, 401, "token: this cluster needs its token")
    assert not refused.ok and "refuses" in refused.detail and "STATE_DIR/token" in refused.fix
    assert not check_token_accepted(local, None).ok  # the head did not answer: not known to work


# --- a failed child, in one line ---

def run_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_failed_childs_reason_is_its_exception_line_not_its_exit_status():
    proc = run_child("import torch_that_does_not_exist")
    assert failure_reason(proc) == "ModuleNotFoundError: No module named 'torch_that_does_not_exist'"


def test_a_failed_childs_reason_skips_advice_printed_after_the_exception():
    # torch's CUDA errors end with lines of advice after the exception's own line.
    proc = run_child("raise RuntimeError('CUDA error: no kernel image is available for execution on the device\\n"
                     "For debugging consider passing CUDA_LAUNCH_BLOCKING=1')")
    assert failure_reason(proc) == "RuntimeError: CUDA error: no kernel image is available for execution on the device"


def test_a_child_without_a_traceback_or_killed_by_a_signal():
    assert failure_reason(run_child("import sys; sys.stderr.write('first\\nlast words\\n'); sys.exit(3)")) == "last words"
    assert failure_reason(run_child("import sys; sys.exit(4)")) == "exit status 4"
    assert failure_reason(run_child("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")).startswith(
        "killed by SIGSEGV")
