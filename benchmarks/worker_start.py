"""What a pool worker's start costs in CPU: salvage's AdamW against torch.optim.AdamW.

    python benchmarks/worker_start.py [--runs 5]

Each run is a fresh Python process that does what a Ray worker does when the
pool starts a training worker on a PC (a new one, or one that replaces a crashed
worker): import Ray and torch, build `workers.tasks.pool_worker.PoolWorker` with the CPU
preset on Tiny Shakespeare (data, model, inner optimizer) and take one local
step. The baseline process is the same but builds its inner optimizer with
torch.optim.AdamW, which imports torch._dynamo, as salvage did before. Runs
alternate between the two; the figure is the median CPU-seconds (user + system)
of a whole process. On a PC that is already training on every core, CPU-seconds
are what the start takes from the others, and what delays the worker's return.
The LAST line printed is a JSON object with both medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

CHILD = """
import sys
import ray, torch
from workers.tasks.pool_worker import PoolWorker
from jobs.gpt import diloco
from jobs.gpt.codecs import Broadcast
from jobs.gpt.config import PRESETS
from jobs.gpt.outer import PoolSchedule

if sys.argv[1] == "torch":
    def torch_adamw(model, cfg):
        t = cfg.train
        return torch.optim.AdamW(model.param_groups(t.weight_decay), lr=t.learning_rate, betas=(t.beta1, t.beta2))
    diloco.build_optimizer = torch_adamw
cfg = PRESETS["shakespeare-char-cpu"]()
worker = PoolWorker(cfg.to_dict(), sys.argv[2], 1, "fp16")
message = Broadcast(worker.initial_params(), "fp16").full()
worker.trainer.run_round(message, 1, 0, 1000, PoolSchedule(total_tokens=10**6), None)
"""


def child_cpu(kind: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", CHILD, kind, str(CORPUS)], cwd=REPO, env=env, check=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="processes of each kind (default 5)")
    args = ap.parse_args()
    if not CORPUS.exists():
        raise SystemExit(f"corpus: {CORPUS} not found (see ../shared/data/README)")
    child_cpu("ours")  # warm the page cache and the corpus's token cache
    cpu: dict[str, list[float]] = {"ours": [], "torch": []}
    for i in range(args.runs):
        for kind in cpu:
            cpu[kind].append(child_cpu(kind))
        print(f"run {i + 1}/{args.runs}: ours {cpu['ours'][-1]:.2f} CPU-s, torch.optim {cpu['torch'][-1]:.2f} CPU-s",
              file=sys.stderr, flush=True)
    ours, base = statistics.median(cpu["ours"]), statistics.median(cpu["torch"])
    print(f"worker start: {ours:.2f} CPU-s with salvage's AdamW, {base:.2f} with torch.optim.AdamW "
          f"(baseline); ratio {ours / base:.3f}")
    print(json.dumps({"start_cpu_s": round(ours, 3), "baseline_cpu_s": round(base, 3),
                      "ratio": round(ours / base, 3), "runs": args.runs}))


if __name__ == "__main__":
    main()
