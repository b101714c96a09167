"""Types every science app shares: capability needs, the App protocol, errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable


@dataclass(frozen=True)
class Needs:
    """What a host must offer to run an app's work units."""

    gpu: bool = False  # True: needs a GPU
    gpu_capable: bool = False  # can use a GPU if the host has one (runs on CPU otherwise)
    min_vram_bytes: int = 0
    min_compute_capability: float = 0.0


class ParamError(ValueError):
    """Bad work-unit parameters; the message is one line naming the field."""


class ResultError(ValueError):
    """A worker's result has the wrong shape or types; one line naming the field."""


class UnknownAppError(ValueError):
    """No app is registered under the requested name."""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or belongs to other parameters."""


class Paused(Exception):
    """Raised by App.run when should_stop() asked it to yield; progress is in the checkpoint."""


@runtime_checkable
class App(Protocol):
    """A kind of science work unit: what it needs, how to run one, and how the head judges results.

    Life of a unit. The head validates the parameters once at submission
    (validate_params) and stores the completed dict. It sends copies of the
    unit to distinct hosts; each host calls run() and sends back the result.
    At the head, every result of every app goes through, in order:

    1. check_result(): shape and types; then the JSON text must fit in
       max_result_bytes. A failure makes the result invalid.
    2. verify(params, result): run for every result, before any quorum. It
       must reject whatever the result itself shows to be wrong (a claimed
       number that does not follow from the data it carries, an impossible
       value). False (or an exception) makes the result invalid: no credit.
    3. compare(a, b) between the surviving results of the unit: once
       min_quorum of them agree, the unit is done, its canonical result is
       kept and the agreeing hosts get credit.

    Results come from machines the project does not control: assume any of
    them may be forged by a host that wants credit without the work.
    verify() and compare() together decide what a forgery can buy, so design
    them against the cheapest lie, not just against bugs.

    An implementation is a plain class with the attributes and methods below;
    register an instance in jobs/science/apps/__init__.py. Apps never import
    the head (cluster) or the worker (workers).
    """

    name: str  # registry key and CLI name, e.g. "hp-fold"
    # Bump on any change that alters the results run() returns for the same params: hosts
    # only take units whose version matches their app, so copies of a unit stay comparable.
    version: int
    needs: Needs  # what a host must have to be sent this app's units
    # True if verify() proves a result correct on its own (not merely well-formed); shown to users.
    self_verifying: bool
    # Agreeing results a unit needs unless its batch says otherwise (the batch's default min_quorum).
    # 1 only if verify() alone makes a lie worthless; 2 where a host could skip the work and still
    # pass verify(), so that a second host's independent copy must agree.
    default_quorum: int
    max_result_bytes: int  # a result whose JSON text is longer is invalid; keep it bounded

    def params_schema(self) -> dict[str, str]:
        """Every accepted parameter name mapped to one line of help: meaning, range, default.

        `salvage science apps` prints it; validate_params must reject any other name.
        """
        ...

    def validate_params(self, params: dict) -> dict:
        """The complete parameters: every field coerced, range-checked and defaulted.

        Raise ParamError with a one-line message starting with the field's name. The
        result must be JSON-serialisable and a fixed point: validate_params(p) == p for
        any p it returned, since the head stores it and hosts validate it again.
        """
        ...

    def flops(self, params: dict) -> float:
        """Estimated floating-point (or interpreter) operations of one run, for scheduling and credit."""
        ...

    def run(
        self,
        params: dict,
        *,
        device: str = "cpu",
        checkpoint: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict:
        """Do the work on `device` ("cpu" or a torch device string) and return the result, a JSON object.

        The same params (seed included) must give the same result wherever compare() needs
        it (an app whose compare() demands equality must be deterministic on every machine).
        `checkpoint`: a file path the app owns. If it exists, resume from it (CheckpointError
        if it is unreadable or was written for other params); write it atomically
        (checkpoint.atomic_write) from time to time. Poll should_stop() often (a second or so
        apart at most); when it returns True, write the checkpoint and raise Paused. A resumed
        run must end with the result an uninterrupted one would have returned.
        Raise any other exception for a failure: the worker reports it as a client error.
        """
        ...

    def check_result(self, result: object) -> None:
        """Raise ResultError (one line, naming the field) unless `result` has this app's shape and types.

        Runs at the head on untrusted input before anything else looks at it: check every
        field that verify() and compare() will read, and reject unknown fields.
        """
        ...

    def compare(self, a: dict, b: dict) -> bool:
        """True if two checked and verified results of the same unit agree (symmetric).

        For a deterministic app: equality of everything that matters. For a statistical one:
        agreement within a band no host can widen by its own say-so (a band built from a
        claimed error bar must take the smaller claim).
        """
        ...

    def verify(self, params: dict, result: dict) -> bool:
        """False if the result, checked against the unit's params, cannot be honest.

        Runs at the head for every result of every app, before quorum, on a result that
        passed check_result(). Recompute whatever can be recomputed cheaply from what the
        result carries (an energy from a conformation, a mean from its blocks) and compare
        it with the claim; check every count the params determine. Return True only if all
        holds; it may raise on garbage, which counts as False.
        """
        ...
