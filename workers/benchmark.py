"""A short fp32 matmul FLOP-rate measurement per device.

Run as a child process (`python -m workers.benchmark`), so the long-running
agent never keeps torch (hundreds of MB) in its own memory. The figures are
kept on disk for a day, so a PC that restarts (a power cut, a reboot) rejoins
without paying for importing torch and timing matmuls again.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

MAX_AGE_S = 24 * 3600.0  # a PC's speed changes slowly; the pool measures tokens/s every round anyway


def measure(device: str, seconds: float = 0.5) -> float:
    """GFLOP/s of fp32 n×n matmuls on `device`, best of a few timed runs."""
    import torch

    n = 1024 if device.startswith("cuda") else 256
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b  # warm-up: first call pays for kernel selection
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    reps = 4
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        elapsed = time.perf_counter() - start
        best = max(best, 2 * n**3 * reps / elapsed / 1e9)
    return best


class BenchmarkError(RuntimeError):
    """The measurement failed; `str()` is its one-line reason (the child's last error line)."""


def run_in_child(gpu_indices: list[int], timeout: float = 120.0) -> dict[str, float]:
    """Measure CPU and the given CUDA devices in a child process."""
    cmd = [sys.executable, "-P", "-m", "workers.benchmark", *map(str, gpu_indices)]  # -P: not the cwd on the path
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"the measurement took over {timeout:.0f} s") from None
    if out.returncode != 0:
        from .doctor import failure_reason  # lazy: the benchmark child needs none of it

        raise BenchmarkError(failure_reason(out))
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(device: str) -> dict:
    """The health check: a fixed matrix product on `device` against float64 on the
    CPU. A GPU that lies about its arithmetic, or cannot run it, fails."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    a = torch.randn(256, 256, generator=gen, dtype=torch.float64)
    b = torch.randn(256, 256, generator=gen, dtype=torch.float64)
    want = a @ b
    target = "cpu" if device == "cpu" else f"cuda:{device[3:]}"
    got = (a.float().to(target) @ b.float().to(target)).double().cpu()
    error = float((got - want).norm() / want.norm())
    return {"ok": bool(error < 1e-4), "detail": f"{device}: relative error {error:.1e} of a 256x256 product"}


def measure_cached(gpu_indices: list[int], identity: dict, path: Path,
                   max_age_s: float = MAX_AGE_S) -> tuple[dict[str, float], float | None]:
    """The speeds of the last measurement of this same hardware (`identity`) if it
    is younger than `max_age_s`, else a new measurement, which is then kept.
    Returns (speeds, age in seconds of the kept figures, or None if just measured)."""
    try:
        kept = json.loads(path.read_text())
        age = time.time() - kept["at"]
        if kept["identity"] == identity and 0 <= age < max_age_s:
            return {k: float(v) for k, v in kept["speeds"].items()}, age
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # none kept yet, or unreadable: measure
    speeds = run_in_child(gpu_indices)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"identity": identity, "at": time.time(), "speeds": speeds}))
    os.replace(tmp, path)  # several agents on one PC may write at once
    return speeds, None


def main(argv: list[str]) -> None:
    import torch

    if argv[:1] == ["--check"]:
        print(json.dumps(check(argv[1])))
        return
    torch.set_num_threads(1)  # per-core figure: the agent may share the PC with others
    result = {"cpu": measure("cpu")}
    for index in map(int, argv):
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            result[f"gpu{index}"] = measure(f"cuda:{index}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
