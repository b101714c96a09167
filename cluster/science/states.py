"""The store's states and records: what a copy, a result and a work unit can be,
what a host offers, a batch's replication policy, and what a call did."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class ServerState(IntEnum):
    # UNSENT copies are a per-WU count (wu.need), not rows: a copy gets a row,
    # and so a host, only when it is sent.
    UNSENT = 0
    IN_PROGRESS = 1
    OVER = 2


class Outcome(IntEnum):
    NONE = 0  # not over yet
    SUCCESS = 1
    CLIENT_ERROR = 2
    NO_REPLY = 3  # deadline passed, or the host was lost
    ABORTED = 4  # the WU no longer needed it


class ValidateState(IntEnum):
    INITIAL = 0
    VALID = 1
    INVALID = 2
    INCONCLUSIVE = 3


class WuState(IntEnum):
    ACTIVE = 0
    DONE = 1  # has a canonical result
    ERROR = 2


class WuError(IntEnum):
    NONE = 0
    TOO_MANY_ERRORS = 1
    TOO_MANY_TOTAL_RESULTS = 2
    NO_CONSENSUS = 3
    CANCELLED = 4  # the operator withdrew its batch


@dataclass(frozen=True)
class GpuCaps:
    vram_bytes: int
    compute_capability: float


@dataclass(frozen=True)
class HostCaps:
    """What the coordinator knows about a host when it asks for work."""

    name: str
    cpu_only: bool = True
    gpus: list[GpuCaps] = field(default_factory=list)
    speed_gflops: float = 1.0
    machine: str = ""  # the physical PC; several names on one PC never count twice in a quorum ("": its name)


@dataclass(frozen=True)
class Policy:
    """Replication policy of a batch's work units; None = derived default."""

    min_quorum: int | None = None
    target_nresults: int | None = None
    max_error_results: int = 3
    max_total_results: int = 6
    delay_bound: float | None = None  # seconds; default derived from flops


@dataclass
class ReportSummary:
    """What report()/sweep() did, for logs and metrics."""

    accepted: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    validated: int = 0  # results that became valid
    invalid: int = 0
    wus_done: int = 0
    wus_error: int = 0
