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
    name: str
    version: int
    needs: Needs
    self_verifying: bool  # True if verify() is meaningful (fewer replicas needed)
    max_result_bytes: int  # a result whose JSON is bigger is invalid

    def params_schema(self) -> dict[str, str]: ...

    def validate_params(self, params: dict) -> dict: ...

    def flops(self, params: dict) -> float: ...

    def run(
        self,
        params: dict,
        *,
        device: str = "cpu",
        checkpoint: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict: ...

    def check_result(self, result: object) -> None: ...

    def compare(self, a: dict, b: dict) -> bool: ...

    def verify(self, params: dict, result: dict) -> bool: ...
