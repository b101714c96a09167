"""A short fp32 matmul FLOP-rate measurement per device.

Run as a child process (`python -m workers.benchmark`), so the long-running
agent never keeps torch (hundreds of MB) in its own memory.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time


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


def run_in_child(gpu_indices: list[int], timeout: float = 120.0) -> dict[str, float]:
    """Measure CPU and the given CUDA devices in a child process."""
    cmd = [sys.executable, "-m", "workers.benchmark", *map(str, gpu_indices)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)  # per-core figure: the agent may share the PC with others
    result = {"cpu": measure("cpu")}
    for index in map(int, argv):
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            result[f"gpu{index}"] = measure(f"cuda:{index}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
