"""Field-by-field coercion of work-unit parameters with one-line errors."""

from __future__ import annotations

import math
from typing import Any

from jobs.science.apps.base import ParamError


def reject_unknown(params: object, known: set[str]) -> dict:
    if not isinstance(params, dict):
        raise ParamError(f"params: expected a JSON object, got {type(params).__name__}")
    extra = sorted(set(params) - known)
    if extra:
        raise ParamError(f"{extra[0]}: unknown field (known: {', '.join(sorted(known))})")
    return params


def as_int(params: dict, field: str, default: Any, lo: int | None = None, hi: int | None = None) -> int:
    value = params.get(field, default)
    # bool is an int subclass in Python but never a meaningful count here
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ParamError(f"{field}: expected an integer, got {value!r}")
    _check_range(field, value, lo, hi)
    return value


def as_float(params: dict, field: str, default: Any, lo: float | None = None, hi: float | None = None) -> float:
    value = params.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(f"{field}: expected a finite number, got {value!r}")
    _check_range(field, float(value), lo, hi)
    return float(value)


def require(params: dict, field: str) -> Any:
    if field not in params:
        raise ParamError(f"{field}: required field is missing")
    return params[field]


def _check_range(field: str, value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise ParamError(f"{field}: expected >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ParamError(f"{field}: expected <= {hi}, got {value}")
