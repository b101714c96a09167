"""How fast salvage takes a device from a PC's BOINC client, and gives it back.

Against the real client (Debian's `boinc`, started privately as
tests/support/boincclient.py explains), managed by a real agent
(`worker join --boinc`) on a real loopback cluster:

- yield_latency_s: from salvage placing work on the PC (measured from before
  the `salvage ... submit` command starts, so an upper bound) to the real
  client reporting the suspended mode on a second connection, as the
  owner's BOINC Manager would see it;
  the worst of N placements, alternating a training job on the PC's GPU
  (BOINC's GPU mode) and a batch of science units on its CPU (its run mode).
- refill_latency_s: from the device going idle (the work's claim on it gone)
  plus the idle time, to the client reporting the owner's mode again; worst
  of N.

Baseline, in the same run: the same placements straight through the
manager's RPC (BoincManager.update, no agent, no head, no Ray), the floor the
agent's one-second look and the head's placement add to.

This is the mode switch, not the moment a running BOINC app stops: no project
is attached (no network). Goal: each ≤ 5 s. Last line: JSON.

    python benchmarks/boinc_yield.py [--placements 20] [--idle-s 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "support"))
from boincclient import BOINC, RealClient, free_port  # noqa: E402
from localcluster import LocalCluster, salvage  # noqa: E402

from workers.boinc import BoincManager, BoincRpc, ModeState  # noqa: E402

GOAL_S = 5.0
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=32", "--set", "block_size=32",
        "--set", "max_iters=1000000", "--set", "eval_interval=1000", "--set", "log_interval=50"]
OWNER = {"gpu": ModeState("always", "always", 0.0), "cpu": ModeState("auto", "auto", 0.0)}


def wait_for(check, what: str, timeout_s: float = 60.0, step_s: float = 0.05) -> float:
    """perf_counter() when `check()` first holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step_s)
    return time.perf_counter()


def mode_of(observer: BoincRpc, resource: str) -> ModeState:
    status = observer.get_cc_status()
    return status.run if resource == "cpu" else status.gpu


# --- the floor: the manager alone ---
def floor_placement(manager: BoincManager, observer: BoincRpc, resource: str, idle_s: float) -> tuple[float, float]:
    device = "gpu0" if resource == "gpu" else "cpu"
    start = time.perf_counter()
    manager.update({device: True})
    held = wait_for(lambda: mode_of(observer, resource).current == "never", "held")
    idle_from = time.perf_counter()
    manager.update({device: False})

    def back() -> bool:
        manager.update({device: False})  # every 50 ms: the manager's own cadence is not what is measured
        return mode_of(observer, resource) == OWNER[resource]
    return held - start, wait_for(back, "given back", idle_s + 30) - idle_from - idle_s


def floor(client: RealClient, placements: int, idle_s: float) -> tuple[list[float], list[float]]:
    observer = client.rpc()
    manager = BoincManager(client.rpc(), idle_s=idle_s)
    yields, refills = [], []
    for i in range(placements):
        took, gave = floor_placement(manager, observer, "gpu" if i % 2 == 0 else "cpu", idle_s)
        yields.append(took)
        refills.append(gave)
    manager.stop()
    observer.close()
    return yields, refills


# --- through the agent ---
class Pc:
    def __init__(self, cluster: LocalCluster, client: RealClient, idle_s: float):
        self.cluster, self.client, self.idle_s = cluster, client, idle_s
        self.observer = client.rpc()
        self.claims = cluster.state_dir / "agents" / "pc.claims"
        self.last_claimed: dict[str, float] = {}  # device -> the last time a live claim on it was seen
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        """The moment a device goes idle is the last moment its work's claim file exists."""
        while True:
            now = time.perf_counter()
            try:
                names = [p.name for p in self.claims.iterdir()]
            except OSError:
                names = []
            for name in names:
                if name[0].isdigit():  # a live claim, not a "done-" marker
                    self.last_claimed[name.rsplit(".", 1)[1]] = now
            time.sleep(0.02)

    def sd(self, *args: str) -> str:
        return salvage(*args, "--state-dir", str(self.cluster.state_dir)).stdout

    def place(self, resource: str) -> tuple[float, float]:
        """One placement; (yield latency, refill latency)."""
        device = "gpu0" if resource == "gpu" else "cpu"
        placed = time.perf_counter()  # before the submit: this counts the CLI starting, an upper bound
        if resource == "gpu":
            out = self.sd("train", "submit", "--data", str(CORPUS), *TINY)
        else:  # a few seconds of science on the CPU
            out = self.sd("science", "submit", "hp-fold", "--sequence", "HPHPPHHPHPPHPHHPPHPH", "--seeds", "16",
                          "--params", '{"sweeps": 75000, "replicas": 2}', "--quorum", "1")
        ident = out.strip().splitlines()[-1]
        held = wait_for(lambda: mode_of(self.observer, resource).current == "never", f"{resource} held")
        if resource == "gpu":
            self.sd("train", "stop", ident)
        back = wait_for(lambda: mode_of(self.observer, resource) == OWNER[resource], f"{resource} given back", 300)
        return held - placed, back - self.last_claimed[device] - self.idle_s


def through_agent(client: RealClient, placements: int, idle_s: float, tmp: Path) -> tuple[list[float], list[float]]:
    cluster = LocalCluster(tmp / "state")
    cluster.up()
    try:
        cluster.join("pc", "GTX 1060:6GB:6.1", "--boinc", "--boinc-rpc", f"127.0.0.1:{client.port}",
                     "--boinc-password-file", str(client.password_file), "--boinc-idle", f"{idle_s:g}")
        cluster.wait_state("pc", "alive", timeout=180)
        pc = Pc(cluster, client, idle_s)
        yields, refills = [], []
        for i in range(placements):
            resource = "gpu" if i % 2 == 0 else "cpu"
            took, gave = pc.place(resource)
            print(f"  placement {i + 1:2d} ({resource}): yield {took:.2f} s, refill {gave:+.2f} s past the idle time",
                  flush=True)
            yields.append(took)
            refills.append(gave)
        pc.observer.close()
        return yields, refills
    finally:
        cluster.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--placements", type=int, default=20)
    parser.add_argument("--idle-s", type=float, default=2.0, help="the agent's --boinc-idle")
    args = parser.parse_args()
    if BOINC is None:
        sys.exit("needs the real BOINC client: apt-get install boinc-client")
    if not CORPUS.exists():
        sys.exit(f"needs the training corpus at {CORPUS}")
    version = subprocess.run([BOINC, "--version"], capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        client = RealClient(Path(tmp) / "boinc", free_port()).start()
        try:
            setup = client.rpc()
            setup.set_gpu_mode("always")  # the owner's own modes, so "back" means the owner's
            setup.set_run_mode("auto")
            setup.close()
            floor_yields, floor_refills = floor(client, args.placements, args.idle_s)
            print(f"floor (the manager alone): yield worst {max(floor_yields):.3f} s, "
                  f"refill worst {max(floor_refills):+.3f} s", flush=True)
            yields, refills = through_agent(client, args.placements, args.idle_s, Path(tmp))
        finally:
            client.stop()
    result = {
        "yield_latency_s": round(max(yields), 3),
        "refill_latency_s": round(max(refills), 3),
        "yield_median_s": round(statistics.median(yields), 3),
        "refill_median_s": round(statistics.median(refills), 3),
        "refill_min_s": round(min(refills), 3),  # below 0 would be a device given back too early
        "baseline_yield_latency_s": round(max(floor_yields), 4),
        "baseline_refill_latency_s": round(max(floor_refills), 4),
        "yield_vs_baseline": round(max(yields) / max(max(floor_yields), 1e-6), 1),
        "goal_s": GOAL_S,
        "placements": args.placements,
        "idle_s": args.idle_s,
        "client": f"BOINC {version[0] if version else '?'}",
    }
    for name in ("yield_latency_s", "refill_latency_s"):
        verdict = "meets" if result[name] <= GOAL_S else "MISSES"
        print(f"{name}: worst {result[name]:.3f} s of {args.placements} through the agent "
              f"(median {result[name.replace('latency', 'median')]:.3f} s; the manager alone: "
              f"{result['baseline_' + name]:.4f} s); goal ≤ {GOAL_S:g} s: {verdict}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
