"""The fp16 codec's cost per pool round, against numpy's own float16 conversion.

    python benchmarks/codec_speed.py

Real round deltas: the CPU preset's model (0.8M parameters) trains 17 local steps
(the pool's LAN sync interval) on Tiny Shakespeare at the learning rate of 10%,
50% and 95% of the way through the schedule, so the deltas have the sizes they
have then: the later, the smaller, and numpy's conversion is slowest on small
values. Timed (best of 15): encoding and decoding each delta with salvage's
codec and with numpy's `astype`. In a round of four workers the head encodes
one message and decodes five.
The LAST line printed is a JSON object with the head's time per round at each
point, ours and numpy's, and their ratio averaged over the three.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.gpt.codecs import Broadcast, from_fp16, to_fp16  # noqa: E402
from jobs.gpt.config import load_config  # noqa: E402
from jobs.gpt.data import default_cache_dir, prepare_data  # noqa: E402
from jobs.gpt.diloco import LocalTrainer, flat_params  # noqa: E402
from jobs.gpt.outer import PoolSchedule  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def best_ms(fn, repeat: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)  # the least disturbed run on a noisy machine


def main() -> int:
    torch.set_num_threads(1)
    cfg = load_config("shakespeare-char-cpu")
    data = prepare_data(str(CORPUS), "char", cfg.model.block_size, default_cache_dir())
    trainer = LocalTrainer(cfg, data.train, data.tokenizer.vocab_size, seed=1, codec="fp32")
    total = cfg.train.max_iters * 768
    out: dict = {}
    ratios = []
    for at in (0.1, 0.5, 0.95):
        start = flat_params(trainer.model)
        trainer.run_round(Broadcast(start, "fp32").full(), 17, at * total, 17 * 768, PoolSchedule(total_tokens=total))
        delta = start - flat_params(trainer.model)
        half = to_fp16(delta)
        ours = best_ms(lambda d=delta: to_fp16(d)) + 5 * best_ms(lambda h=half: from_fp16(h))
        numpy = best_ms(lambda d=delta: d.astype(np.float16)) + 5 * best_ms(lambda h=half: h.astype(np.float32))
        ratios.append(numpy / ours)
        say(f"at {at:.0%} of the schedule: median |delta| {np.median(np.abs(delta)):.1e}, "
            f"{np.mean(np.abs(delta) < 2**-14):.0%} below float16's normal range; "
            f"head per round {ours:.1f} ms (numpy {numpy:.1f} ms)")
        out[f"at_{int(at * 100)}pct"] = {"ours_ms": round(ours, 2), "numpy_ms": round(numpy, 2)}
    out["ratio"] = round(float(np.mean(ratios)), 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
