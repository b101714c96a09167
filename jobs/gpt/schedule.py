"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math

from jobs.gpt.config import TrainConfig


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Learning rate for optimisation step `it` (0-based).

    Warmup climbs linearly from learning_rate/(warmup+1) to learning_rate, cosine
    decay reaches min_lr at lr_decay_iters, and min_lr holds after that.
    """
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)
