"""Validated science results per second, end to end, against raw Ray tasks
per second on the same loopback cluster in the same run.

A no-op app, quorum 2, durable SQLite state: every transition, credit grant
and trust update is committed. Goal: results_per_s ≥ 20,000 and ≥ 10 ×
ray_tasks_per_s. Last line: JSON.

    python benchmarks/science_throughput.py [--units 100000] [--agents 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from localcluster import LocalCluster  # noqa: E402


def ray_tasks_per_s(address: str, token: str, n: int) -> float:
    # The cluster's Ray requires its token; Ray reads it from the environment once, on import.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        @ray.remote(num_cpus=1)
        def noop():
            return None

        ray.get([noop.remote() for _ in range(50)])  # workers started and warm
        start = time.perf_counter()
        ray.get([noop.remote() for _ in range(n)])
        return n / (time.perf_counter() - start)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--ray-tasks", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "state")
        cluster.up()
        try:
            names = [f"pc{i}" for i in range(args.agents)]
            for name in names:
                cluster.join(name, "")
            for name in names:
                cluster.wait_state(name, "alive", timeout=120)
            head = cluster.client(timeout=120)
            # Warm-up batch: Ray starts its worker processes on each node.
            warm = head.post("/api/science/submit", {"app": "noop", "params": [{"x": i} for i in range(200)],
                                                     "policy": {"min_quorum": 2, "target_nresults": 2}})["batch"]
            while not head.post("/api/science/status", {"batch": warm})["done"]:
                time.sleep(0.2)
            params = [{"x": i} for i in range(args.units)]
            start = time.perf_counter()
            batch = head.post("/api/science/submit", {"app": "noop", "params": params,
                                                      "policy": {"min_quorum": 2, "target_nresults": 2}})["batch"]
            submitted = time.perf_counter()
            while True:
                status = head.post("/api/science/status", {"batch": batch})
                if status["done"]:
                    break
                # Not faster: a status query scans the batch, and the head
                # would spend on polling what it should spend on dispatch.
                time.sleep(0.25)
            elapsed = time.perf_counter() - start
            valid = status["results"]["valid"]
            violations = head.post("/api/science/check", {})["violations"]
            print(f"{args.units} work units, quorum 2: {valid} valid results in {elapsed:.2f} s "
                  f"(submit {submitted - start:.2f} s); consistency violations: {len(violations)}")
            ray_rate = ray_tasks_per_s(f"127.0.0.2:{cluster.ray_port}", cluster.token_file.read_text().strip(),
                                       args.ray_tasks)
        finally:
            cluster.down()
    rate = valid / elapsed
    print(f"validated results/s: {rate:,.0f} (goal ≥ 20,000); raw Ray no-op tasks/s: {ray_rate:,.0f}; "
          f"ratio {rate / ray_rate:.1f}x (goal ≥ 10x)")
    print(json.dumps({"results_per_s": round(rate), "ray_tasks_per_s": round(ray_rate),
                      "ratio": round(rate / ray_rate, 1), "units": args.units, "valid": valid,
                      "wus_done": status["wus"]["done"], "elapsed_s": round(elapsed, 2),
                      "consistency_violations": len(violations)}))


if __name__ == "__main__":
    main()
