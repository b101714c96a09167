"""How the pool's round loop plans a round: pure functions of what it measured,
kept apart from Ray so they can be tested with plain numbers."""
from __future__ import annotations

import math
import statistics

from jobs.gpt.outer import plan_steps, sync_steps_for_link

from .options import PoolOptions

SPEED_MEMORY = 0.5  # weight of the previous speed estimate: speeds drift, so re-measure every round
COMM_FRACTION = 0.10
AUTO_MIN_STEPS = 4
START_RETRY_S = (30.0, 600.0)  # a PC whose worker raised while starting waits this long, doubling, to try again


def estimate_speeds(workers: dict[str, tuple[float | None, float]]) -> tuple[dict[str, float], bool]:
    """Tokens/s of every worker from (measured tokens/s or None, GFLOP/s), and
    whether they are real tokens/s: a worker not yet measured is assumed as fast
    per GFLOP/s as the measured ones (their median), and before anything is
    measured the "speeds" are GFLOP/s, right only in ratio."""
    per_gflop = [speed / gflops for speed, gflops in workers.values() if speed and gflops > 0]
    ratio = statistics.median(per_gflop) if per_gflop else None
    speeds = {}
    for key, (speed, gflops) in workers.items():
        if speed:
            speeds[key] = speed
        elif ratio is not None and gflops > 0:
            speeds[key] = ratio * gflops
        else:
            speeds[key] = max(gflops, 1e-3)
    return speeds, ratio is not None or all(speed for speed, _ in workers.values())


def fastest_steps(options: PoolOptions, round_no: int, auto_steps: int) -> int:
    """Local steps the fastest worker takes this round: the job's fixed interval
    (grown by `sync_growth` each round), or the one chosen from the link."""
    if options.sync_steps:
        base = options.sync_steps * options.sync_growth ** round_no
    else:
        base = auto_steps or AUTO_MIN_STEPS
    return max(1, min(options.max_sync_steps, round(base)))


def plan_round(speeds: dict[str, float], top_steps: int, remaining_steps: float) -> tuple[dict[str, int], bool]:
    """Each worker's steps, in proportion to its speed, and whether this is the
    last round: it would pass the job's budget, so it is cut to end on it."""
    steps = plan_steps(speeds, top_steps)
    last = sum(steps.values()) > remaining_steps
    if last:
        steps = plan_steps(speeds, max(1, math.ceil(top_steps * remaining_steps / sum(steps.values()))))
    return steps, last


def auto_sync_steps(round_wall: float, compute_wall: float, fast_step_s: float) -> int:
    """Keep the time outside computing (transfers, scheduling, the outer step)
    under COMM_FRACTION of the round; re-decided every round from what it cost."""
    comm = max(0.0, round_wall - compute_wall)
    return max(AUTO_MIN_STEPS, sync_steps_for_link(fast_step_s, comm, COMM_FRACTION))


def blend_speed(previous: float | None, measured: float) -> float:
    return measured if previous is None else SPEED_MEMORY * previous + (1 - SPEED_MEMORY) * measured


def start_retry_wait(failed_starts: int) -> float:
    """Seconds before a PC whose worker raised while starting is tried again."""
    return min(START_RETRY_S[1], START_RETRY_S[0] * 2 ** (failed_starts - 1))
