"""lj-md's error bars, the same arithmetic on the PC and at the head: which block each
sample adds to, the blocks' means and standard errors, and the analytic tail
corrections. Plain Python, no torch, so the head and the CLI check lj-md units and
results without loading it.
"""
from __future__ import annotations

import math

R_CUT = 3.0
BLOCKS = 32  # most blocks a result carries


def tail_energy_per_particle(density: float, r_cut: float) -> float:
    """Analytic long-range correction U_tail/N, assuming g(r) = 1 beyond r_cut."""
    return 8.0 / 3.0 * math.pi * density * (r_cut**-9 / 3.0 - r_cut**-3)


def tail_pressure(density: float, r_cut: float) -> float:
    """Analytic long-range correction to the virial pressure, assuming g(r) = 1 beyond r_cut."""
    return 16.0 / 3.0 * math.pi * density**2 * (2.0 / 3.0 * r_cut**-9 - r_cut**-3)


def production_trajectories(p: dict) -> int:
    """Production trajectories each replica runs."""
    return math.ceil(p["steps"] / p["trajectory_steps"])


def block_layout(p: dict) -> tuple[list[int], list[list[int]]]:
    """Which block each (replica, production trajectory) adds to, and each block's count of them.

    Returns (first block of each replica, per replica the trajectory index where each of its
    blocks starts); with 32 replicas or more a block is a group of whole replicas.
    """
    reps, length = p["replicas"], production_trajectories(p)
    if reps >= BLOCKS:
        return [r * BLOCKS // reps for r in range(reps)], [[0]] * reps
    per_rep = min(length, BLOCKS // reps)
    starts = [-(-c * length // per_rep) for c in range(per_rep)]  # ceil: chunk sizes differ by <= 1
    return [r * per_rep for r in range(reps)], [starts] * reps


def block_counts(p: dict) -> list[int]:
    """Samples (trajectories) in each block, in block order."""
    reps, length = p["replicas"], production_trajectories(p)
    first, starts = block_layout(p)
    counts = [0] * (max(first) + len(starts[-1]))
    for r in range(reps):
        edges = starts[r] + [length]
        for c in range(len(starts[r])):
            counts[first[r] + c] += edges[c + 1] - edges[c]
    return counts


def block_statistics(blocks: list[list[float]], p: dict) -> dict:
    """Means and standard errors of U/N and P from block sums; the same code runs on the host and at the head.

    Direct estimator: a block's samples are boxes, U/N = <U>/N and the box virial is <W>.
    Insertion estimator: its samples are test particles in boxes of N-1, and by the potential
    distribution theorem the energy psi and virial w of particle N obey <psi> = <psi e^(-psi/T)>_0 /
    <e^(-psi/T)>_0 over uniform insertions, and U/N = <psi>/2, W = N <w>/2 (each pair counted twice).
    """
    n, rho, temperature = p["n_particles"], p["density"], p["temperature"]
    volume = n / rho
    count = len(blocks)
    per_energy, per_virial = (0.5, 0.5 * n) if p["insertions"] else (1.0 / n, 1.0)
    weight = math.fsum(b[0] for b in blocks)
    energy = [b[1] / b[0] * per_energy for b in blocks]
    virial = [b[2] / b[0] * per_virial for b in blocks]

    def stderr(values: list[float]) -> float:
        mean = math.fsum(values) / count
        return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (count - 1) / count)

    return {
        "energy_per_particle": math.fsum(b[1] for b in blocks) / weight * per_energy
        + tail_energy_per_particle(rho, R_CUT),
        "energy_stderr": stderr(energy),
        "pressure": rho * temperature + math.fsum(b[2] for b in blocks) / weight * per_virial / (3.0 * volume)
        + tail_pressure(rho, R_CUT),
        "pressure_stderr": stderr(virial) / (3.0 * volume),
    }
