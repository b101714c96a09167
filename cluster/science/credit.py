"""Credit in cobblestones, BOINC's unit: 200 per day of a 1 GFLOPS machine."""

from __future__ import annotations

COBBLESTONES_PER_GFLOP_DAY = 200.0
SECONDS_PER_DAY = 86400.0


def cobblestones(flops: float) -> float:
    """Credit for a valid result of a WU estimated at `flops` floating-point operations."""
    return flops / 1e9 / SECONDS_PER_DAY * COBBLESTONES_PER_GFLOP_DAY
