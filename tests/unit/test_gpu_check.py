"""benchmarks/gpu_check.py on the CPU: every check runs and passes, Ray stays out,
and a check that should fail does (a wrong delta, a wrong energy)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from jobs.science.apps.lj_md import COMPARE_SIGMAS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
CHECKS = {"nvml", "train", "delta", "lj"}


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    return load_script()


@pytest.fixture(autouse=True)
def one_thread():
    # Shared 2-core box; also keeps CPU-vs-CPU runs bit for bit equal.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cpu_quick_run_passes_every_check_without_importing_ray():
    # The script runs as __main__ inside a wrapper that afterwards lists every ray
    # module in sys.modules: the GPU box it is meant for has no Ray.
    wrapper = (
        "import json, runpy, sys\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--device', 'cpu', '--quick']\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "    rc = 0\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "print(json.dumps({'rc': rc, 'ray': sorted(m for m in sys.modules if m.split('.')[0] == 'ray')}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) >= 2, proc.stderr[-3000:]
    wrapper_out = json.loads(lines[-1])
    report = json.loads(lines[-2])  # the script's own last line
    assert wrapper_out == {"rc": 0, "ray": []}, wrapper_out
    assert report["ray_imported"] is False

    assert report["pass"] is True, report["checks"]
    assert report["checks"] == dict.fromkeys(CHECKS, True)
    assert set(report["timings_s"]) == CHECKS | {"total"}
    assert report["device"] == "cpu" and report["precision"]["dtype"] == "float32"
    assert report["tokens_per_s"] > 0
    losses = report["losses"]
    assert losses["last_loss"] < losses["first_loss"] and math.isfinite(losses["val_loss"])
    # CPU against CPU in fp32 is the same arithmetic: no error at all, under fp32's bound.
    assert report["delta_rel_error"] == 0.0
    assert report["delta_bound"] == pytest.approx(2 * math.sqrt(2 * 2.0**-24))
    assert report["delta_pass"] is True
    lj = report["lj_energy"]
    assert lj["device"] == lj["cpu"] and lj["band"] > 0 and report["lj_pass"] is True
    # No NVML here: said as data, and the CPU run went on.
    assert report["devices"] == [] and report["torch_devices"] == []
    assert report["nvml_error"] or report["nvml_notes"]
    assert "overall: pass" in proc.stderr


def test_bounds_follow_the_precision(gpu_check):
    assert gpu_check.delta_bound("bfloat16") == pytest.approx(0.125, rel=0.01)
    assert gpu_check.delta_bound("float16") == pytest.approx(0.0442, rel=0.01)
    assert gpu_check.delta_bound("float32") == pytest.approx(6.9e-4, rel=0.01)
    # Coarser arithmetic may differ more, never less.
    assert gpu_check.delta_bound("float32") < gpu_check.delta_bound("tf32") < gpu_check.delta_bound("bfloat16")


def run_in_process(gpu_check: ModuleType, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    rc = gpu_check.main(["--device", "cpu", "--quick"])
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def fast(gpu_check, monkeypatch):
    """Training and the science unit stubbed out: these tests are about one check's verdict."""
    monkeypatch.setattr(gpu_check, "run_training", lambda *a, **k: {"pass": True, "tokens_per_s": 1.0})
    return gpu_check


def test_a_device_delta_off_by_one_percent_fails_the_run(fast, monkeypatch, capsys):
    real = fast.round_delta
    calls: list[str] = []

    def wrong_on_the_device(cfg, data, device, steps):
        out = real(cfg, data, device, steps)
        calls.append(device)
        if len(calls) == 1:  # the device's side runs first, the CPU reference second
            d = out["delta"]
            noise = np.random.default_rng(0).standard_normal(d.size)
            out["delta"] = d + 0.01 * np.linalg.norm(d) / math.sqrt(d.size) * noise
        return out

    monkeypatch.setattr(fast, "round_delta", wrong_on_the_device)
    monkeypatch.setattr(fast, "run_lj_check", lambda *a, **k: {"pass": True})
    rc, report = run_in_process(fast, capsys)
    assert rc == 1 and report["pass"] is False
    assert report["checks"] == {"nvml": True, "train": True, "delta": False, "lj": True}
    assert report["delta_rel_error"] == pytest.approx(0.01, rel=0.05)
    assert report["delta_rel_error"] > report["delta_bound"]
    assert calls == ["cpu", "cpu"]


def lj_result(energy: float, stderr: float) -> dict[str, float]:
    return {"energy_per_particle": energy, "energy_stderr": stderr, "pressure": 1.0, "pressure_stderr": 0.01,
            "acceptance": 0.9, "samples": 20, "seconds": 0.0}


@pytest.mark.parametrize(("shift_sigmas", "passes"), [(COMPARE_SIGMAS - 1, True), (COMPARE_SIGMAS + 1, False)])
def test_lj_energies_must_agree_within_the_servers_band(fast, monkeypatch, capsys, shift_sigmas, passes):
    stderr = 0.003
    shift = shift_sigmas * math.hypot(stderr, stderr)
    energies = iter([-5.0 + shift, -5.0])  # the device's unit, then the CPU's
    monkeypatch.setattr(fast, "run_lj_unit", lambda params, device: lj_result(next(energies), stderr))
    monkeypatch.setattr(fast, "run_delta_check", lambda *a, **k: {"pass": True})
    rc, report = run_in_process(fast, capsys)
    assert report["lj_pass"] is passes and report["pass"] is passes and rc == (0 if passes else 1)
    assert report["lj_energy"]["band"] == pytest.approx(COMPARE_SIGMAS * math.hypot(stderr, stderr))


def test_a_crashing_check_is_reported_and_the_others_still_run(fast, monkeypatch, capsys):
    def broken(*_a: Any, **_k: Any) -> dict[str, Any]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(fast, "run_delta_check", broken)
    monkeypatch.setattr(fast, "run_lj_check", lambda *a, **k: {"pass": True})
    rc, report = run_in_process(fast, capsys)
    assert rc == 1 and report["checks"] == {"nvml": True, "train": True, "delta": False, "lj": True}
    assert report["details"]["delta"]["error"].startswith("RuntimeError: CUDA error")


def test_nvml_gpus_are_reported_and_matched_against_torch(gpu_check, monkeypatch):
    # The simulator stands in for pynvml at the lowest layer, so this is the reader's
    # real path: what a GPU box reports, checked against what torch sees.
    from workers.simnvml import SimulatedNvml

    monkeypatch.setattr(gpu_check, "open_nvml", lambda _sim: SimulatedNvml("H100:80GB:9.0"))
    nvml, reader = gpu_check.probe_nvml()
    assert nvml["error"] is None and reader is not None
    (gpu,) = nvml["gpus"]
    assert (gpu["name"], gpu["compute_capability"], gpu["vram_bytes"]) == ("H100", "9.0", 80 * 2**30)
    (sample,) = nvml["samples"]
    assert sample["temperature_c"] is not None and not sample["lost"]
    same = [{"index": 0, "name": "H100", "compute_capability": "9.0", "total_bytes": 80 * 2**30}]
    assert gpu_check.nvml_verdict(nvml, same)
    assert not gpu_check.nvml_verdict(nvml, [{**same[0], "compute_capability": "8.0"}])
    assert not gpu_check.nvml_verdict(nvml, [])  # GPUs for NVML, none for torch
    assert not gpu_check.nvml_verdict({**nvml, "error": "NVMLError: Unknown Error"}, same)


def test_without_nvml_the_pc_is_cpu_only_and_that_is_data(gpu_check, monkeypatch):
    def no_module(_sim: Any) -> Any:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(gpu_check, "open_nvml", no_module)
    nvml, reader = gpu_check.probe_nvml()
    assert reader is None and "pynvml is not installed" in nvml["error"]
    assert gpu_check.nvml_verdict(nvml, [])  # no GPU anywhere: nothing is wrong
    assert not gpu_check.nvml_verdict(nvml, [{"compute_capability": "9.0"}])
