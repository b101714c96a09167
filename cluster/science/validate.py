"""Result checks and quorum consensus (the validator), free of any storage."""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

Compare = Callable[[Any, Any], bool]

# One shared encoder: compact, and NaN/Infinity (not JSON) are rejected.
to_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode_result(app: Any, payload: Any) -> str | None:
    """The result's JSON text if it is well-formed for the app, else None (invalid).

    Anything a buggy or lying worker sends must end here as 'invalid', never as
    an exception in the coordinator's loop.
    """
    try:
        app.check_result(payload)
        text = to_json(payload)
    except Exception:  # noqa: BLE001 - every malformed result is simply invalid
        return None
    if len(text) > app.max_result_bytes:  # ensure_ascii: chars == bytes
        return None
    return text


def verified(app: Any, params: dict, payload: Any) -> bool:
    """app.verify, where a crash counts as a failed verification."""
    try:
        return bool(app.verify(params, payload))
    except Exception:  # noqa: BLE001
        return False


def agrees(compare: Compare, a: Any, b: Any) -> bool:
    try:
        return bool(compare(a, b))
    except Exception:  # noqa: BLE001 - an uncomparable result disagrees
        return False


def find_consensus(compare: Compare, results: Sequence[Any], quorum: int) -> tuple[int, list[bool]] | None:
    """Pick the canonical result among `results` (>= quorum of them), or None.

    The canonical result is the one with the most results agreeing with it
    (itself included), when they are a strict majority of the quorum and no
    result outside its camp has as many agreeing: two equal camps never
    settle it. Returns (index of the canonical, per-result agreement with it).
    """
    n = len(results)
    if n < quorum:
        return None
    need = quorum // 2 + 1
    agree = [[j == i or agrees(compare, results[i], results[j]) for j in range(n)] for i in range(n)]
    counts = [sum(row) for row in agree]
    best = max(range(n), key=counts.__getitem__)
    if counts[best] < need:
        return None
    if any(counts[j] >= counts[best] for j in range(n) if not agree[best][j]):
        return None
    return best, agree[best]
