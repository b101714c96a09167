"""The Ray actor of one pool job's worker, on the device the head chose. It keeps
its model, inner optimizer and batch stream between rounds; the maths is plain
PyTorch in `jobs.gpt.diloco`. The head imports this module to start the actor,
so torch is imported inside its methods, on the PC only.
"""
from __future__ import annotations

import io
import os
import time

import numpy as np
import ray

from jobs.dutycycle import DutyCycle
from jobs.gpt.config import GPTConfig

from .claims import DeviceClaim
from .faults import CORRUPT_DELTAS_ENV
from .pausing import PauseWatch


class WorkerPaused(Exception):
    """The PC's owner, its operator or its health paused this worker's device
    before it took a step this round; the head leaves it out and resumes later."""


def corrupted(kind: str, result: tuple) -> tuple:
    """A round result broken in one of faults.DELTA_FAULTS' ways."""
    codec, data, scales, size, tokens, steps, *rest = result
    if kind == "short":  # one value, to be broadcast over every parameter
        return (codec, data[:1], scales, 1, tokens, steps, *rest)
    if kind == "nan":
        return (codec, np.full_like(data, np.nan) if data.dtype.kind == "f" else data,
                None if scales is None else np.full_like(scales, np.nan), size, tokens, steps, *rest)
    if kind == "codec":
        return ("int8" if codec != "int8" else "fp16", data, scales, size, tokens, steps, *rest)
    if kind == "inf-scale":
        return (codec, data, None if scales is None else np.full_like(scales, 3e38), size, tokens, steps, *rest)
    return (codec, data, scales, size, 10**15, steps, *rest)  # "tokens": claims a huge share of the average


class PoolWorker:
    def __init__(self, config: dict, data: str | None, seed: int, codec: str,
                 sampler_state: dict | None = None, device: str = "cpu"):
        from jobs.gpt.batches import fixed_batches
        from jobs.gpt.data import default_cache_dir, prepare_data
        from jobs.gpt.diloco import LocalTrainer

        self.cfg = GPTConfig.from_dict(config)
        t = self.cfg.train
        self.data = prepare_data(data, t.tokenizer, self.cfg.model.block_size, default_cache_dir())
        self.trainer = LocalTrainer(self.cfg, self.data.train, self.data.tokenizer.vocab_size, seed=seed,
                                    codec=codec, throttle=DutyCycle.from_env())
        if sampler_state:
            self.trainer.sampler.load_state_dict(sampler_state)
        self.val = fixed_batches(self.data.val, self.cfg.model.block_size, t.batch_size, t.eval_iters, t.seed + 1)
        self.pause = PauseWatch.here(device)
        # Held for the actor's life: its process ends with it, and that releases the claim.
        self.claim = DeviceClaim.here(device).take()

    def info(self) -> dict:
        return {"device": self.trainer.describe(), "n_params": self.trainer.model.num_params(),
                "note": self.data.note, "data": self.data.corpus_name}

    def initial_params(self):
        from jobs.gpt.diloco import flat_params

        return flat_params(self.trainer.model)

    def run_round(self, message_box: list, steps: int, start_tokens: float, round_tokens: float, schedule,
                  budget_s: float | None, overrun_cost: float = 1.0) -> tuple:
        """Returns (codec, data, scales, size, tokens, steps, wall_s, fetch_s, loss, sampler_state).

        The round's parameters (whole, or as a change to the last ones) come boxed in
        a list so that fetching them is timed here: that is this worker's link. A
        pause of its device ends the round before the next step (within a second);
        one that came before any step raises WorkerPaused."""
        t0 = time.perf_counter()
        message = ray.get(message_box[0])
        fetch_s = time.perf_counter() - t0
        r = self.trainer.run_round(message, steps, start_tokens, round_tokens, schedule, budget_s, overrun_cost,
                                   should_stop=self.pause)
        if r.steps == 0:
            raise WorkerPaused(f"paused ({self.pause.reason()})")
        d = r.delta
        result = (d.codec, d.data, d.scales, d.size, r.tokens, r.steps, time.perf_counter() - t0, fetch_s,
                  r.loss, r.sampler_state)
        kind = os.environ.get(CORRUPT_DELTAS_ENV)
        return corrupted(kind, result) if kind else result

    def evaluate(self, params) -> float:
        from jobs.gpt.train import evaluate

        self._load(params)
        return evaluate(self.trainer.model, self.val, self.trainer.micro, self.trainer.dev, self.trainer.autocast)

    def export(self, params, tokens: int, val_loss: float | None) -> bytes:
        """A single-worker checkpoint of the global model, so `train sample` reads it."""
        import torch

        from jobs.gpt.checkpoint import FORMAT, VERSION

        self._load(params)
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "version": VERSION, "iter": int(tokens // self.trainer.tokens_per_step),
                    "val_loss": val_loss, "model": self.trainer.model.state_dict(), "config": self.cfg.to_dict(),
                    "tokenizer": self.data.tokenizer.to_dict()}, buf)
        return buf.getvalue()

    def _load(self, params) -> None:
        from jobs.gpt.diloco import load_flat

        load_flat(self.trainer.model, params)
