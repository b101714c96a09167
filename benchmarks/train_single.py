"""Single-device GPT training through the real job path: final validation loss,
tokens/s, and the job path's throughput against a bare PyTorch loop.

    python benchmarks/train_single.py [--max-iters N] [--preset shakespeare-char-cpu]

It starts a loopback cluster (`salvage cluster up`, one `salvage worker join` with
a simulated RTX 3060 and one CPU), submits `salvage train submit --preset ...
--data <corpus>`, follows it with `salvage train logs -f` to the end, prints a
sample from `salvage train sample`, and takes the cluster down again. Its LAST
line is a JSON object:

    val_loss           the job's final validation loss
    tokens_per_s       the job's own figure: training tokens/s over the whole run
                       (evaluation and checkpoint writes left out, as train() does)
    job_p90_tokens_per_s / bare_tokens_per_s
                       the 90th percentile of the job's and of the bare PyTorch
                       loop's windows of log_interval steps (see below)
    overhead_ratio     job_p90_tokens_per_s / bare_tokens_per_s (goal >= 0.95)

Why it is measured this way: this box is shared, and others' work comes and goes,
moving the speed of either loop by 2x within a minute. The bare loop cannot run
*during* the job without the two fighting for the same cores, so it runs in
windows of log_interval steps just before and just after the job, against the
job's own progress windows of log_interval steps. A neighbour can only ever slow
a window down, so (as with timeit's advice to take the fastest repeat) the fast
end of each side's windows is what that loop does when left alone; the 90th
percentile rather than the maximum, so one lucky window decides nothing. The
medians are reported too (median_ratio), with the bare loop's median before and
after the job and the load averages, to show how much the load drifted.

The bare loop is the same model, optimizer, schedule, seed and batch stream
(`BatchSampler` with the job's seed) on as many threads as the job's Ray task
used (Ray gives a task num_cpus threads: 1 here; the job reports its count).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "support"))

from localcluster import SALVAGE, LocalCluster, salvage, test_env

from jobs.gpt.adamw import AdamW
from jobs.gpt.batches import BatchSampler
from jobs.gpt.config import ConfigError, GPTConfig, load_config
from jobs.gpt.data import Dataset, prepare_data
from jobs.gpt.model import GPT
from jobs.gpt.schedule import lr_at

DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
AGENT = "bench"
SIMULATED_GPU = "RTX 3060:12GB:8.6"
JOB_THREADS = 1  # the job's Ray task asks for num_cpus=1, and Ray sets its threads to that


class BareLoop:
    """The least a training loop can do: sample, forward, backward, clip, step.
    Same model, optimizer, schedule, seed and batch stream as the job."""

    def __init__(self, cfg: GPTConfig, data: Dataset) -> None:
        torch.manual_seed(cfg.train.seed)
        self.cfg = cfg
        self.model = GPT(replace(cfg.model, vocab_size=data.tokenizer.vocab_size))
        t = cfg.train
        self.opt = AdamW(self.model.param_groups(t.weight_decay), lr=t.learning_rate, betas=(t.beta1, t.beta2))
        self.sampler = BatchSampler(data.train, cfg.model.block_size, t.batch_size, seed=t.seed)
        self.tokens_per_iter = t.batch_size * cfg.model.block_size
        self.it = 0
        self.rates: list[float] = []  # tokens/s of each measured window

    def step(self) -> float:
        t = self.cfg.train
        x, y = self.sampler.next()
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.it, t)
        _, loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.opt.step()
        self.opt.zero_grad()
        self.it += 1
        return loss.item()

    def measure(self, windows: int) -> None:
        """`windows` timed windows of log_interval steps (the job's window size)."""
        if self.it == 0:
            self.step()  # like train(), leave the very first step out of the timing
        n = self.cfg.train.log_interval
        for _ in range(windows):
            start = time.perf_counter()
            for _ in range(n):
                self.step()
            self.rates.append(n * self.tokens_per_iter / (time.perf_counter() - start))


def p90(rates: list[float]) -> float:
    return statistics.quantiles(rates, n=10)[-1]


def job_record(state_dir: Path, job: int) -> tuple[dict[str, Any], list[float]]:
    """The finished job's summary and the tokens/s of each of its progress windows,
    read from the head's database (read-only)."""
    db = sqlite3.connect(f"file:{state_dir / 'salvage.db'}?mode=ro", uri=True)
    try:
        (summary,) = db.execute("SELECT summary_json FROM train_jobs WHERE id = ?", (job,)).fetchone()
        rows = db.execute("SELECT data_json FROM train_log WHERE job_id = ? AND kind = 'progress' ORDER BY seq",
                          (job,)).fetchall()
    finally:
        db.close()
    rates = [d["tokens_per_s"] for (raw,) in rows if (d := json.loads(raw)).get("tokens_per_s")]
    return json.loads(summary or "{}"), rates


def follow(state_dir: Path, job: int) -> None:
    """`salvage train logs JOB -f`, its lines printed as they come."""
    proc = subprocess.Popen([*SALVAGE, "train", "logs", "--state-dir", str(state_dir), str(job), "-f"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**test_env(), "COLUMNS": "200"})  # rich wraps at 80 when not on a terminal
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip():
            print(line.rstrip(), flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"salvage train logs {job} -f exited with {proc.returncode}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char-cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-iters", type=int, default=None, help="shorter run (also sets lr_decay_iters)")
    parser.add_argument("--bare-windows", type=int, default=None,
                        help="bare-loop windows before and again after the job [default: a tenth of the job's]")
    parser.add_argument("--save-checkpoint", type=Path, default=None,
                        help="copy the finished job's checkpoint here (to study the model afterwards)")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"data: {args.data} not found (expected the shared Tiny Shakespeare copy)", file=sys.stderr)
        return 2
    overrides = {}
    if args.max_iters:
        # The schedule is squeezed into the shorter run; a run shorter than the warmup never decays.
        decay = max(args.max_iters, load_config(args.preset).train.warmup_iters)
        overrides = {"max_iters": args.max_iters, "lr_decay_iters": decay}
    try:
        cfg = load_config(args.preset, overrides=overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    t = cfg.train
    bare_windows = args.bare_windows or max(5, t.max_iters // t.log_interval // 10)
    torch.set_num_threads(JOB_THREADS)
    t0, load_start = time.monotonic(), os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="salvage-bench-") as tmp:
        state_dir = Path(tmp) / "state"
        state_dir.mkdir()
        data = prepare_data(str(args.data), t.tokenizer, cfg.model.block_size, Path(tmp) / "cache")
        bare = BareLoop(cfg, data)
        cluster = LocalCluster(state_dir)
        try:
            cluster.up()
            cluster.join(AGENT, SIMULATED_GPU)
            cluster.wait_state(AGENT, "alive", timeout=120)
            print(f"cluster up, agent {AGENT!r} ({SIMULATED_GPU}, 1 CPU) joined after {time.monotonic() - t0:.0f} s",
                  flush=True)
            # Bare windows run with the idle cluster up, so both sides share its background load.
            bare.measure(bare_windows)
            print(f"bare loop before the job: median {statistics.median(bare.rates):,.0f} tok/s "
                  f"over {bare_windows} windows", flush=True)
            out = salvage("train", "submit", "--state-dir", str(state_dir), "--preset", args.preset,
                          "--data", str(args.data), *sets).stdout
            job = int(out.strip().splitlines()[-1])
            print(f"submitted job {job}: salvage train submit --preset {args.preset} --data {args.data} "
                  f"{' '.join(sets)}", flush=True)
            follow(state_dir, job)
            bare.measure(bare_windows)
            print(f"bare loop after the job: median {statistics.median(bare.rates[bare_windows:]):,.0f} tok/s",
                  flush=True)
            row = next(j for j in json.loads(salvage("train", "list", "--state-dir", str(state_dir),
                                                     "--json").stdout) if j["id"] == job)
            if row["state"] != "done":
                print(f"job {job} ended {row['state']}: {row['error']}", file=sys.stderr)
                return 1
            summary, job_rates = job_record(state_dir, job)
            if args.save_checkpoint:
                shutil.copyfile(state_dir / "jobs" / f"train-{job}" / "ckpt.pt", args.save_checkpoint)
            text = salvage("train", "sample", "--state-dir", str(state_dir), str(job), "--tokens", "400",
                           "--seed", "0").stdout
        finally:
            cluster.down()
    print("--- sample (salvage train sample: 400 tokens, temperature 0.8, top_k 200, seed 0) ---")
    print(text.rstrip("\n"))
    print("---")
    job_fast, bare_fast = p90(job_rates), p90(bare.rates)
    if summary.get("threads") not in (None, JOB_THREADS):
        print(f"warning: the job ran on {summary['threads']} threads, the bare loop on {JOB_THREADS}",
              file=sys.stderr)
    figures = {
        "preset": cfg.preset,
        "iters": row["iter"],
        "val_loss": round(row["val_loss"], 4),
        "tokens_per_s": round(summary["tokens_per_s"], 1),
        "job_p90_tokens_per_s": round(job_fast, 1),
        "bare_tokens_per_s": round(bare_fast, 1),
        "overhead_ratio": round(job_fast / bare_fast, 4),
        "median_ratio": round(statistics.median(job_rates) / statistics.median(bare.rates), 4),
        "job_median_tokens_per_s": round(statistics.median(job_rates), 1),
        "bare_median_before_after": [round(statistics.median(bare.rates[:bare_windows]), 1),
                                     round(statistics.median(bare.rates[bare_windows:]), 1)],
        "job_windows": len(job_rates),
        "bare_windows": len(bare.rates),
        "loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "params": summary.get("params"),
        "job_threads": summary.get("threads"),
        "bare_threads": JOB_THREADS,
        "host": row["host"],
        "device": summary.get("device"),
        "wall_s": round(time.monotonic() - t0),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
