"""Throughput of the science store: submit -> fetch_work -> report -> validate.

Drives N no-op WUs with quorum 2 through a real SQLite file (WAL, durable
commits) with several fake hosts taking turns, `--batch` tasks per fetch and
report (as the coordinator ships them per Ray task). Measures the head's side
only: no Ray, no app run. Last line: JSON with the figures.

    python benchmarks/science_store.py --wus 100000 --hosts 2 --batch 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.science.states import HostCaps  # noqa: E402
from cluster.science.store import ScienceStore  # noqa: E402
from jobs.science.tasks import Report  # noqa: E402


@dataclass(frozen=True)
class _Needs:
    gpu: bool = False
    gpu_capable: bool = False
    min_vram_bytes: int = 0
    min_compute_capability: float = 0.0


class NoopApp:
    """The cheapest possible app, so the figure is the store's own cost."""

    name = "noop"
    version = 1
    needs = _Needs()
    self_verifying = False
    default_quorum = 2
    max_result_bytes = 1024

    def validate_params(self, params: dict) -> dict:
        return {"i": int(params["i"])}

    def flops(self, params: dict) -> float:
        return 1e9

    def check_result(self, result: object) -> None:
        if not isinstance(result, dict):
            raise ValueError("result: expected an object")

    def compare(self, a: dict, b: dict) -> bool:
        return a == b

    def verify(self, params: dict, result: dict) -> bool:
        return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wus", type=int, default=100_000)
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1000, help="tasks per fetch_work / report call")
    ap.add_argument("--quorum", type=int, default=2)
    ap.add_argument("--adaptive", action="store_true", help="let trusted hosts get single copies (BOINC)")
    ap.add_argument("--dir", type=Path, default=None, help="state dir (default: a temp dir)")
    args = ap.parse_args()

    app = NoopApp()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="science-bench-"))
    store = ScienceStore(workdir / "state.db", workdir / "out", apps=lambda name: app,
                         adaptive_replication=args.adaptive)
    hosts = [HostCaps(f"host{i}", speed_gflops=10.0) for i in range(args.hosts)]

    t0 = time.perf_counter()
    batch = store.submit("noop", [{"i": i} for i in range(args.wus)], min_quorum=args.quorum,
                         target_nresults=args.quorum)
    t_submit = time.perf_counter() - t0

    t1, c1 = time.perf_counter(), time.process_time()
    fetch_s = report_s = 0.0
    now = time.time()
    while True:
        moved = 0
        for host in hosts:
            a = time.perf_counter()
            tasks = store.fetch_work(host, args.batch, now=now)
            b = time.perf_counter()
            if tasks:
                # what run_tasks returns on the worker for the no-op app
                store.report(host.name, [Report(t.result_id, "success", {"i": t.wu_id}) for t in tasks], now=now)
                moved += len(tasks)
            report_s += time.perf_counter() - b
            fetch_s += b - a
        if not moved:
            break
    wall = time.perf_counter() - t1
    cpu = time.process_time() - c1

    status = store.batch_status(batch)
    problems = store.check_consistency()
    store.close()
    validated = status["results"]["valid"]
    figures = {
        "wus": args.wus,
        "hosts": args.hosts,
        "batch": args.batch,
        "quorum": args.quorum,
        "adaptive": args.adaptive,
        "done": status["done"],
        "validated_results": validated,
        "submit_s": round(t_submit, 3),
        "loop_s": round(wall, 3),
        "loop_cpu_s": round(cpu, 3),
        "fetch_s": round(fetch_s, 3),
        "report_s": round(report_s, 3),
        "results_per_s": round(validated / wall),
        "results_per_cpu_s": round(validated / cpu),
        "consistency_violations": len(problems),
    }
    print(f"{validated} validated results in {wall:.2f} s ({validated / wall:,.0f}/s wall,"
          f" {validated / cpu:,.0f}/s per CPU second); submit {t_submit:.2f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
