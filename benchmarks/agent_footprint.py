"""The worker agent's own footprint (not Ray's raylet): RSS and CPU over a
window at the default poll interval, plus `cluster up` to ready and
`worker join` to visible in `status`.

Goal: agent ≤ 80 MB RSS and ≤ 1% of one core. Baseline, in the same run: an
idle bare Python interpreter (the floor any Python agent pays).
Last line: JSON.

    python benchmarks/agent_footprint.py [--seconds 60]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from localcluster import LocalCluster  # noqa: E402


def footprint(pid: int, seconds: float) -> tuple[float, float]:
    """Peak RSS in MB and CPU in % of one core over `seconds`."""
    proc = psutil.Process(pid)
    cpu0 = proc.cpu_times()
    peak = 0
    end = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < end:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(1.0)
    cpu1 = proc.cpu_times()
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return peak / 2**20, 100.0 * used / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "state")
        t0 = time.monotonic()
        cluster.up()
        up_s = time.monotonic() - t0
        try:
            t0 = time.monotonic()
            # Default poll interval: no --poll-interval here.
            agent = subprocess.Popen(
                [sys.executable, "-m", "cluster.cli", "worker", "join", cluster.address, "--name", "bench",
                 "--simulate-gpus", "GTX 1060:3GB:6.1,RTX 3060:12GB:8.6", "--metrics-port", "0",
                 "--num-cpus", "1", "--log-dir", str(Path(tmp) / "agents"), "--token-file", str(cluster.token_file)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cluster.wait_state("bench", "alive", timeout=120)
            join_s = time.monotonic() - t0
            print(f"cluster up to ready: {up_s:.1f} s; worker join to visible in status: {join_s:.1f} s")
            print(f"measuring the agent (pid {agent.pid}) for {args.seconds:.0f} s ...", flush=True)
            rss_mb, cpu_pct = footprint(agent.pid, args.seconds)
            bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            time.sleep(1.0)
            bare_mb, bare_cpu = footprint(bare.pid, 5.0)
            bare.kill()
            agent.terminate()
            agent.wait(30)
        finally:
            cluster.down()
    print(f"agent: {rss_mb:.1f} MB RSS (goal ≤ 80), {cpu_pct:.2f}% of one core (goal ≤ 1)")
    print(f"bare Python baseline: {bare_mb:.1f} MB RSS, {bare_cpu:.2f}% CPU")
    print(json.dumps({"agent_rss_mb": round(rss_mb, 1), "agent_cpu_percent": round(cpu_pct, 3),
                      "bare_python_rss_mb": round(bare_mb, 1), "rss_ratio_vs_bare": round(rss_mb / bare_mb, 2),
                      "cluster_up_s": round(up_s, 1), "join_to_status_s": round(join_s, 1)}))


if __name__ == "__main__":
    main()
