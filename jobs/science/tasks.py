"""What crosses between the head's store and a PC: a task to compute and the
report of what came of it. Both travel through Ray as plain tuples."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Task:
    """One result copy to compute; many travel in one Ray task.

    Params travel as the stored JSON text and are decoded on the worker, which
    keeps the head's dispatch loop free of per-task decoding.
    """

    result_id: int
    wu_id: int
    app: str
    version: int
    params_json: str

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)


@dataclass(frozen=True, slots=True)
class Report:
    """A host's answer for one Task: outcome 'success' (payload = result dict)
    or 'client_error' (payload = a short message)."""

    result_id: int
    outcome: str
    payload: Any = None
