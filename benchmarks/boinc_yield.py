"""How fast salvage takes a device from the PC's BOINC client, and gives it back.

Against the real client (Debian's `boinc`, started privately with the same
flags as tests/system/test_boinc_client.py, which explains each one):

- yield_latency_s: from salvage deciding a device is busy (the call to
  BoincManager.update) to the real client reporting the suspended mode
  (get_cc_status on a second connection); worst of N placements.
- refill_latency_s: from the device going idle, plus the idle time, to the
  client reporting the owner's mode again, minus the idle time; worst of N.
  The manager is called every --poll-s here; through the agent its poll
  interval (5 s by default) adds to this.

Placements alternate between a GPU ("gpu0": BOINC's GPU mode) and the CPU
(its run mode). This is the mode switch, not the moment a running BOINC app
stops: no project is attached (no network).

Goal: each ≤ 5 s. Last line: JSON.

    python benchmarks/boinc_yield.py [--placements 20] [--idle-s 2] [--poll-s 0.25]
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workers.boinc import BoincError, BoincManager, BoincRpc  # noqa: E402

GOAL_S = 5.0
PASSWORD = "salvage-bench-pw"


def start_client(data_dir: Path) -> tuple[subprocess.Popen, int]:
    """A private client: own data dir, port and password; no GPUs probed, no network."""
    boinc = shutil.which("boinc")
    if boinc is None:
        sys.exit("needs the real BOINC client: apt-get install boinc-client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (data_dir / "gui_rpc_auth.cfg").write_text(PASSWORD + "\n")
    (data_dir / "cc_config.xml").write_text(
        "<cc_config><options><dont_contact_ref_site>1</dont_contact_ref_site></options></cc_config>\n")
    with open(data_dir / "client.log", "ab") as log:
        proc = subprocess.Popen(
            [boinc, "--dir", str(data_dir), "--gui_rpc_port", str(port),
             "--no_gpus", "--no_info_fetch", "--skip_cpu_benchmarks"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            BoincRpc(port=port, password=PASSWORD, timeout_s=1).get_cc_status()
            return proc, port
        except BoincError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_client(proc)
                sys.exit(f"the BOINC client did not start; see {data_dir / 'client.log'}")
            time.sleep(0.1)


def stop_client(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(check, what: str, timeout_s: float = 30.0, between=None) -> float:
    """perf_counter() when `check()` first holds; `between()` runs before each look after the first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        if between:
            between()


def place(manager: BoincManager, observer: BoincRpc, device: str, owner_mode: str,
          idle_s: float, poll_s: float) -> tuple[float, float]:
    """One placement on `device`: (yield latency, refill latency)."""
    resource = "cpu" if device == "cpu" else "gpu"

    def mode():
        status = observer.get_cc_status()
        return status.run if resource == "cpu" else status.gpu

    start = time.perf_counter()
    manager.update({device: True})
    seen = wait_for(lambda: mode().current == "never", f"{resource} held")
    if manager.status().note:
        raise SystemExit(f"manager: {manager.status().note}")

    idle_from = time.perf_counter()
    manager.update({device: False})

    def poll():
        time.sleep(poll_s)
        manager.update({device: False})

    back = wait_for(lambda: (m := mode()).current == owner_mode and m.temp_left_s == 0,
                    f"{resource} given back", timeout_s=idle_s + 30, between=poll)
    return seen - start, back - idle_from - idle_s


def measure(port: int, placements: int, idle_s: float, poll_s: float) -> tuple[list[float], list[float]]:
    observer = BoincRpc(port=port, password=PASSWORD)
    # The owner's own modes, distinct from the client's default so "back" means the owner's.
    observer.set_gpu_mode("always")
    observer.set_run_mode("auto")
    owner = {"gpu0": "always", "cpu": "auto"}
    manager = BoincManager(BoincRpc(port=port, password=PASSWORD), idle_s=idle_s)
    yields, refills = [], []
    for i in range(placements):
        device = "gpu0" if i % 2 == 0 else "cpu"
        took, gave = place(manager, observer, device, owner[device], idle_s, poll_s)
        yields.append(took)
        refills.append(gave)
    manager.stop()
    observer.set_gpu_mode("auto")
    observer.close()
    return yields, refills


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--placements", type=int, default=20)
    parser.add_argument("--idle-s", type=float, default=2.0)
    parser.add_argument("--poll-s", type=float, default=0.25)
    args = parser.parse_args()
    version = subprocess.run(["boinc", "--version"], capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_client(Path(tmp))
        try:
            yields, refills = measure(port, args.placements, args.idle_s, args.poll_s)
        finally:
            stop_client(proc)
    result = {
        "yield_latency_s": round(max(yields), 4),
        "refill_latency_s": round(max(refills), 4),
        "yield_median_s": round(statistics.median(yields), 4),
        "refill_median_s": round(statistics.median(refills), 4),
        "refill_min_s": round(min(refills), 4),  # below 0 would mean a device given back too early
        "goal_s": GOAL_S,
        "placements": args.placements,
        "idle_s": args.idle_s,
        "poll_s": args.poll_s,
        "client": f"BOINC {version[0] if version else '?'}",
    }
    for name in ("yield_latency_s", "refill_latency_s"):
        verdict = "meets" if result[name] <= GOAL_S else "MISSES"
        median = result[name.replace("latency", "median")]
        print(f"{name}: worst {result[name]:.4f} s of {args.placements} (median {median:.4f} s); "
              f"goal ≤ {GOAL_S:g} s: {verdict}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
