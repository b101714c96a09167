"""The head's side of pool training (DiLoCo-style rounds), numpy only so the head
never imports torch: the token-weighted average of the workers' deltas, the outer
Nesterov step, the inner learning-rate schedule it hands out, and how long a round
should be. The worker's side is `jobs.gpt.diloco`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jobs.gpt.config import GPTConfig


def allreduce_bytes(tokens: int, n_params: int, n_workers: int, tokens_per_step: int) -> float:
    """What per-step synchronous data parallelism would move for `tokens`: every step
    each of n workers sends and receives 2(n-1)/n of an fp32 gradient (ring all-reduce)."""
    n = max(2, n_workers)
    steps = tokens / (tokens_per_step * n)
    return steps * n * 2 * (2 * (n - 1) / n) * 4 * n_params


class OuterOptimizer:
    """Nesterov momentum on the pseudo-gradient (global minus averaged local params)."""

    def __init__(self, n_params: int, lr: float, momentum: float) -> None:
        self.lr = lr
        self.momentum = momentum
        self.buf = np.zeros(n_params, dtype=np.float32)

    def step(self, params: np.ndarray, pseudo_grad: np.ndarray) -> np.ndarray:
        self.buf *= self.momentum
        self.buf += pseudo_grad
        return params - self.lr * (pseudo_grad + self.momentum * self.buf)


def average_deltas(deltas: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Token-weighted mean of (delta, tokens) pairs."""
    total = sum(t for _, t in deltas)
    out = np.zeros_like(deltas[0][0])
    for d, t in deltas:
        out += d * (t / total)
    return out


@dataclass
class PoolSchedule:
    """The inner learning rate as a function of the pool's global token count: the
    single-worker cosine schedule stretched over `total_tokens`, times `lr_scale`.
    A round averages what several workers learned, like one step on a larger batch,
    and a larger batch takes a proportionally larger step (the linear scaling rule;
    see `pool_lr_scale`)."""

    total_tokens: int
    lr_scale: float = 1.0

    def lr(self, tokens: float, cfg: GPTConfig) -> float:
        t = cfg.train
        top, floor = t.learning_rate * self.lr_scale, t.min_lr * self.lr_scale
        it = tokens / self.total_tokens * t.max_iters
        if it < t.warmup_iters:
            return top * (it + 1) / (t.warmup_iters + 1)
        if it >= t.lr_decay_iters:
            return floor
        progress = (it - t.warmup_iters) / (t.lr_decay_iters - t.warmup_iters)
        return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (top - floor)


def pool_lr_scale(speeds: list[float], cap: float = 4.0) -> float:
    """The pool's speed in units of its fastest worker: how much larger the batch
    behind each round is than one worker's. Measured on the CPU preset with speeds
    1, 1/2, 1/4, 1/8: the scaled rate (1.875x) reached the single worker's loss with
    fewer tokens than the unscaled one needed by far (see benchmarks/train_pool.py)."""
    top = max(speeds)
    return min(cap, sum(speeds) / top) if top > 0 else 1.0


def plan_steps(speeds: dict[str, float], fastest_steps: int) -> dict[str, int]:
    """Local steps per worker so that all finish together: proportional to speed,
    the fastest running `fastest_steps`. Slow workers get at least one step."""
    top = max(speeds.values())
    return {w: max(1, round(fastest_steps * s / top)) for w, s in speeds.items()}


def sync_steps_for_link(step_s: float, transfer_s: float, comm_fraction: float = 0.10) -> int:
    """Fewest local steps per round that keep communication under `comm_fraction`
    of the round, given one step's compute time and one round-trip's transfer time."""
    if step_s <= 0:
        return 1
    return max(1, math.ceil(transfer_s * (1 - comm_fraction) / (comm_fraction * step_s)))
