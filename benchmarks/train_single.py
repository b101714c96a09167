"""Single-device GPT training figures: final validation loss and the job path's
throughput against a bare PyTorch loop over the same model and batches.

    python benchmarks/train_single.py [--max-iters N] [--threads 2]

Prints progress, a text sample, then as its LAST line a JSON object with
val_loss, tokens_per_s, bare_tokens_per_s and overhead_ratio (job / bare).

This box is shared, so its speed drifts while the benchmark runs. To compare like
with like, the bare loop runs in chunks of log_interval steps *between* the job's
progress reports (from the on_progress callback, whose time train() leaves out of
its measured windows): both sides are sampled alternately over the same minutes.

`job_path` is the one function to swap for another way of running the same
training (e.g. through the cluster): it gets the callback and must return
train()'s summary keys `iters` and `val_loss`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.gpt.config import GPTConfig, load_config  # noqa: E402
from jobs.gpt.data import Dataset, prepare_data  # noqa: E402
from jobs.gpt.model import GPT  # noqa: E402
from jobs.gpt.sample import sample  # noqa: E402
from jobs.gpt.schedule import lr_at  # noqa: E402
from jobs.gpt.train import format_progress, train  # noqa: E402

DEFAULT_DATA = REPO / ".." / "shared" / "data" / "tinyshakespeare.txt"


def job_path(
    cfg: GPTConfig, data: Path, workdir: Path, cache_dir: Path, on_progress: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    return train(
        cfg, str(data), workdir, device="cpu",
        on_progress=on_progress,
        on_log=lambda line: print(line, flush=True),
        cache_dir=cache_dir,
    )


class BareLoop:
    """The least a training loop can do: sample, forward, backward, clip, step.
    Same model, optimizer, schedule, seed and batch stream as train()."""

    def __init__(self, cfg: GPTConfig, data: Dataset) -> None:
        torch.manual_seed(cfg.train.seed)
        self.cfg = cfg
        self.model = GPT(replace(cfg.model, vocab_size=data.tokenizer.vocab_size))
        t = cfg.train
        self.opt = torch.optim.AdamW(self.model.param_groups(t.weight_decay), lr=t.learning_rate,
                                     betas=(t.beta1, t.beta2))
        self.tokens = data.train
        self.rng = np.random.default_rng(t.seed)
        self.offsets = np.arange(cfg.model.block_size + 1)
        self.it = 0
        self.windows: list[tuple[int, float]] = []

    def run(self, iters: int) -> None:
        t, block = self.cfg.train, self.cfg.model.block_size
        start = time.perf_counter()
        timed = iters
        for _ in range(iters):
            if self.it == 0:  # like train(), leave the very first step out of the timing
                timed -= 1
            ix = self.rng.integers(0, len(self.tokens) - block, size=t.batch_size)
            rows = torch.from_numpy(self.tokens[ix[:, None] + self.offsets].astype(np.int64))
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.it, t)
            _, loss = self.model(rows[:, :-1].contiguous(), rows[:, 1:].contiguous())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if self.it == 0:
                start = time.perf_counter()
            self.it += 1
        if timed > 0:
            self.windows.append((timed, time.perf_counter() - start))


class JobWindows:
    """The job's own measured windows, recovered from its progress reports."""

    def __init__(self, cfg: GPTConfig) -> None:
        self.tokens_per_iter = cfg.train.batch_size * cfg.model.block_size
        self.last_iter = 0
        self.windows: list[tuple[int, float]] = []

    def add(self, p: dict[str, Any]) -> None:
        # train() times each window from its second step on after a (re)start.
        counted = p["iter"] - self.last_iter - (1 if self.last_iter == 0 else 0)
        if p.get("tokens_per_s") and counted > 0:
            self.windows.append((counted, counted * self.tokens_per_iter / p["tokens_per_s"]))
        self.last_iter = p["iter"]


def rates(windows: list[tuple[int, float]], tokens_per_iter: int) -> tuple[float, float]:
    """(aggregate, median) tokens/s over measured windows of (iters, seconds)."""
    total = sum(n for n, _ in windows) * tokens_per_iter / sum(s for _, s in windows)
    return total, statistics.median(n * tokens_per_iter / s for n, s in windows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char-cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-iters", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"data: {args.data} not found (expected the shared Tiny Shakespeare copy)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    overrides = {"max_iters": args.max_iters} if args.max_iters else None
    cfg = load_config(args.preset, overrides=overrides)
    tokens_per_iter = cfg.train.batch_size * cfg.model.block_size

    with tempfile.TemporaryDirectory(prefix="salvage-bench-") as tmp:
        tmp_path = Path(tmp)
        cache = tmp_path / "cache"
        data = prepare_data(str(args.data), cfg.train.tokenizer, cfg.model.block_size, cache)
        bare = BareLoop(cfg, data)
        job = JobWindows(cfg)

        def on_progress(p: dict[str, Any]) -> None:
            print(format_progress(p), flush=True)
            job.add(p)
            bare.run(p["iter"] - bare.it)  # keep the bare loop level with the job

        summary = job_path(cfg, args.data, tmp_path / "run", cache, on_progress)
        text = sample(tmp_path / "run", prompt="\n", tokens=400, seed=0)
    print("--- sample (400 tokens, temperature 0.8, top_k 200, seed 0) ---")
    print(text)
    print("---")
    job_rate, job_median = rates(job.windows, tokens_per_iter)
    bare_rate, bare_median = rates(bare.windows, tokens_per_iter)
    figures = {
        "preset": cfg.preset,
        "iters": summary["iters"],
        "val_loss": round(summary["val_loss"], 4),
        "tokens_per_s": round(job_rate, 1),
        "bare_tokens_per_s": round(bare_rate, 1),
        "overhead_ratio": round(job_rate / bare_rate, 4),
        # The same comparison using the median window on each side (robust to bursts of load).
        "median_overhead_ratio": round(job_median / bare_median, 4),
        "windows": len(job.windows),
        "params": summary["params"],
        "threads": args.threads,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
