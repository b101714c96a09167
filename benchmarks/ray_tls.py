"""What Ray's own TLS (RAY_USE_TLS) costs: a loopback cluster of a head and one
node, with token authentication as salvage runs it, with and without TLS on
every gRPC channel, certificates from the head's CA (cluster/head/tls.py),
measured in the same run.

    python benchmarks/ray_tls.py [--tasks 2000] [--mb 64] [--rounds 2]

Figures per mode: no-op task round trips per second (the science dispatch's
pattern), and MB/s of one object moved from the head's object store to a task
on the node (a pool round's parameters). Modes alternate for --rounds, and the
best of each is kept. Last line, JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from cluster.head import tls  # noqa: E402
from workers.raynode import NO_LOG_MONITOR, RayNode, free_ports, node_ports_args, port_in_use, ray_env, ray_tls_env  # noqa: E402

IP = "127.0.0.2"


DRIVER = """
import json, sys, time
import numpy as np, ray
address, n_tasks, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")

@ray.remote(num_cpus=1)
def noop():
    return None

@ray.remote(num_cpus=1)
def size(a):
    return a.nbytes

ray.get([noop.remote() for _ in range(100)])  # workers started and warm
t0 = time.perf_counter()
ray.get([noop.remote() for _ in range(n_tasks)])
tasks_per_s = n_tasks / (time.perf_counter() - t0)
rates = []
for i in range(3):
    ref = ray.put(np.full(mb * 2**20 // 8, float(i)))  # in the head's store; the task runs on the node
    t0 = time.perf_counter()
    ray.get(size.remote(ref))
    rates.append(mb / (time.perf_counter() - t0))
print(json.dumps({"tasks_per_s": tasks_per_s, "transfer_mb_per_s": max(rates)}))
"""


def run_mode(use_tls: bool, certs: tuple[Path, Path, Path], work: Path, n_tasks: int, mb: int) -> dict:
    token = secrets.token_hex(32)
    extra = ray_tls_env(*certs) if use_tls else {}
    env = ray_env(token, extra)
    port, dash, client = free_ports(3, IP)
    store = ["--object-store-memory", str(300 * 2**20)]
    logs = work / ("tls" if use_tls else "plain")
    head = RayNode(["--head", "--port", str(port), "--node-ip-address", IP, "--num-cpus", "0",
                    "--include-dashboard", "false", "--dashboard-port", str(dash),
                    "--ray-client-server-port", str(client), *store, *node_ports_args(IP), *NO_LOG_MONITOR],
                   env, logs / "head.log")
    node = RayNode(["--address", f"{IP}:{port}", "--node-ip-address", IP, "--num-cpus", "2", *store,
                    *node_ports_args(IP), *NO_LOG_MONITOR], env, logs / "node.log")
    head.start()
    try:
        deadline = time.monotonic() + 120
        while not port_in_use(IP, port):
            if not head.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start: {head.log_tail(3)}")
            time.sleep(0.5)
        node.start()
        proc = subprocess.run([sys.executable, "-c", DRIVER, f"{IP}:{port}", str(n_tasks), str(mb)],
                              env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"driver failed ({'TLS' if use_tls else 'plain'}): {proc.stderr[-2000:]}"
                               f"\nhead: {head.log_tail(5)}\nnode: {node.log_tail(5)}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        node.kill()
        head.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ca_dir = work / "tls"
        files = tls.ray_head(ca_dir, IP)  # head and node share one address here, so one certificate
        certs = (files.ca, files.cert, files.key)
        best: dict[str, dict[str, float]] = {"plain": {}, "tls": {}}
        for _ in range(args.rounds):
            for mode in ("plain", "tls"):
                got = run_mode(mode == "tls", certs, work, args.tasks, args.mb)
                print(f"{mode:>5}: {got['tasks_per_s']:,.0f} tasks/s, {got['transfer_mb_per_s']:,.0f} MB/s", flush=True)
                for k, v in got.items():
                    best[mode][k] = max(best[mode].get(k, 0.0), v)
    ratio = {k: best["tls"][k] / best["plain"][k] for k in best["plain"]}
    print(f"TLS keeps {ratio['tasks_per_s']:.0%} of the task rate and {ratio['transfer_mb_per_s']:.0%} of the "
          f"transfer rate")
    print(json.dumps({"plain": {k: round(v, 1) for k, v in best["plain"].items()},
                      "tls": {k: round(v, 1) for k, v in best["tls"].items()},
                      "tls_over_plain": {k: round(v, 3) for k, v in ratio.items()}}))


if __name__ == "__main__":
    main()
