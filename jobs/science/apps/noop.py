"""`noop`: a work unit that does nothing, for measuring scheduling throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from jobs.science.apps.base import Needs, ResultError
from jobs.science.apps.params import as_int, reject_unknown, require


class Noop:
    name = "noop"
    version = 1
    needs = Needs()
    self_verifying = False
    default_quorum = 2
    max_result_bytes = 64

    def params_schema(self) -> dict[str, str]:
        return {"x": "an integer, echoed back as y (required)"}

    def validate_params(self, params: dict) -> dict:
        reject_unknown(params, {"x"})
        return {"x": as_int(params, "x", require(params, "x"))}

    def flops(self, params: dict) -> float:
        return 1e3

    def run(
        self,
        params: dict,
        *,
        device: str = "cpu",
        checkpoint: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict:
        return {"y": self.validate_params(params)["x"]}

    def check_result(self, result: object) -> None:
        if not isinstance(result, dict) or set(result) != {"y"}:
            raise ResultError("result: expected a JSON object with exactly the field y")
        if isinstance(result["y"], bool) or not isinstance(result["y"], int):
            raise ResultError(f"y: expected an integer, got {result['y']!r}")

    def compare(self, a: dict, b: dict) -> bool:
        return a == b

    def verify(self, params: dict, result: dict) -> bool:
        return True
