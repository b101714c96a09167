"""What the agent needs from any volunteer-compute client already on a PC.

BOINC is the first (`guirpc.BoincRpc`); a Folding@home v8 client (local
WebSocket API) can implement the same `ComputeClient` later and be driven by
the same manager. Resources are named "cpu" and "gpu", and a client speaks
its own mode words ("always"/"auto"/"never" for BOINC).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

RESOURCES = ("cpu", "gpu")

# Tasks are counted in these states only, whatever the client: bounded labels.
TASK_STATES = ("new", "downloading", "ready", "running", "suspended", "uploading",
               "ready_to_report", "error", "aborted")


class ClientError(Exception):
    """A client that cannot be used now; `str()` is the one-line reason."""


@dataclass(frozen=True)
class ModeState:
    """One resource's mode as the client reports it."""

    current: str  # the mode in effect
    perm: str  # the mode it returns to when a temporary one ends
    temp_left_s: float = 0.0  # > 0: `current` is temporary and ends in this many seconds


@dataclass(frozen=True)
class ProjectInfo:
    url: str
    name: str
    host_total_credit: float


@dataclass
class Overview:
    """The slower-changing picture: attached projects and their tasks."""

    projects: list[ProjectInfo] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)  # TASK_STATES -> count


class ComputeClient(Protocol):
    """What `BoincManager` drives. Every method raises `ClientError` (and only
    that) when the client cannot be reached or understood."""

    kind: str  # "boinc"; names the client in notes
    suspended: str  # the mode word that stops the client using a resource

    def modes(self) -> dict[str, ModeState]:
        """Each resource of RESOURCES and its mode now (one cheap call)."""
        ...

    def hold(self, resource: str, lease_s: float) -> None:
        """Stop using `resource` for `lease_s` seconds; the client takes it back
        by itself afterwards unless the hold is renewed, so a crashed agent
        never leaves it stopped. A client that cannot expire a mode may ignore
        the lease."""
        ...

    def give_back(self, resource: str, owner: ModeState) -> None:
        """Put the owner's setting back exactly (`owner.temp_left_s` already
        counts down to now)."""
        ...

    def overview(self) -> Overview:
        ...

    def close(self) -> None:
        ...
