"""What the head takes from a pool worker at the end of a round, and what it
refuses. A worker runs on someone's PC: a flaky GPU, a bug or a liar can send a
delta of the wrong shape, NaNs, an int8 scale of 3e38 or a claim of 1e15
tokens. Each is refused with a one-line reason, that worker sits the round out,
and the job goes on with the others."""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass

import numpy as np

from jobs.gpt.codecs import Packed, decode, packed_problem

NORM_FACTOR = 8.0  # a delta this many times larger per step than its peers' is refused
MAX_SAMPLER_BYTES = 4096


@dataclass
class Expected:
    codec: str
    n_params: int
    tokens_per_step: int
    max_steps: int  # the most steps this worker's round allows (twice its plan on a time budget)


@dataclass
class Taken:
    delta: np.ndarray
    tokens: int
    steps: int
    loss: float
    compute_s: float  # time it computed, as the head can vouch for it
    sampler: dict
    nbytes: int  # what travelled up

    @property
    def norm_per_step(self) -> float:
        return float(np.linalg.norm(self.delta)) / self.steps


def take(result: object, expected: Expected, elapsed_s: float) -> Taken | str:
    """A worker's round result, checked, or why it is refused. `elapsed_s` is the
    time the head saw between sending the round and the result's arrival: the
    worker's own claim of its compute time is held within it, so that claiming a
    short time (to look fast and be given more steps) buys at most a factor 4."""
    try:
        codec, data, scales, size, tokens, steps, wall_s, fetch_s, loss, sampler = result
    except (TypeError, ValueError):
        return "result: expected the ten fields of a round"
    why = packed_problem(codec, data, scales, size, expected.codec, expected.n_params)
    if why:
        return f"delta {why}"
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= expected.max_steps:
        return f"steps: expected 1 to {expected.max_steps}, got {str(steps)[:20]}"
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens != steps * expected.tokens_per_step:
        return f"tokens: expected {steps} steps x {expected.tokens_per_step}, got {str(tokens)[:20]}"
    for name, value in (("loss", loss), ("wall_s", wall_s), ("fetch_s", fetch_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name}: expected a finite number, got {str(value)[:20]}"
    if not isinstance(sampler, dict) or len(_json(sampler)) > MAX_SAMPLER_BYTES:
        return "sampler: expected the batch stream's small state"
    with np.errstate(over="ignore", invalid="ignore"):  # an absurd scale overflows: refused just below
        delta = decode(Packed(codec, data, scales, size))
    if not np.isfinite(delta).all():
        return "delta: not finite"
    compute = min(max(wall_s - fetch_s, 0.25 * elapsed_s), elapsed_s)
    return Taken(delta, tokens, steps, float(loss), max(compute, 1e-6), sampler,
                 int(data.nbytes + (scales.nbytes if scales is not None else 0)))


def _json(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return "x" * (MAX_SAMPLER_BYTES + 1)


def norm_outliers(norms: dict[str, float], typical: float | None, factor: float = NORM_FACTOR) -> set[str]:
    """Workers whose delta norm per step is over `factor` times the median of the
    round's other workers' (or, alone in a round, of `typical`, the recent rounds'
    median). A few hot steps move parameters more than a quiet round; a broken or
    forged delta moves them by orders of magnitude."""
    out = set()
    for key, norm in norms.items():
        others = [v for k, v in norms.items() if k != key]
        ref = statistics.median(others) if others else typical
        if ref is not None and ref > 0 and norm > factor * ref:
            out.add(key)
    return out
