"""The science endpoints of the head's API: submit a batch, its status, its
results, and the store's consistency check."""
from __future__ import annotations

import io
from typing import Callable

from cluster.head.http import ApiError, Route, submission_key
from jobs.science.apps.base import Needs

from .store import ScienceStore
from .waiting import HostView, Queue, why_waiting

MAX_UNITS_PER_BATCH = 1_000_000


class ScienceApi:
    """`hosts` gives the alive PCs as science sees them, so a batch's status can say
    why its units wait (`waiting`, one line per reason); without it, it does not."""

    def __init__(self, store: ScienceStore, log: Callable[[str], None],
                 cancel: Callable[[int], dict] | None = None, hosts: Callable[[], list[HostView]] | None = None):
        self.store = store
        self.log = log
        self.cancel = cancel or store.cancel  # the dispatcher's, which also stops running tasks
        self.hosts = hosts

    def routes(self) -> dict:
        return {("POST", "/api/science/submit"): Route(self.api_submit),
                ("POST", "/api/science/status"): Route(self.api_status),
                ("POST", "/api/science/export"): Route(self.api_export),
                ("POST", "/api/science/check"): Route(self.api_check),
                ("POST", "/api/science/cancel"): Route(self.api_cancel)}

    def api_cancel(self, body: dict) -> dict:
        batch = body.get("batch")
        if isinstance(batch, bool) or not isinstance(batch, int):
            raise ApiError(400, "batch: expected a batch id")
        try:
            return self.cancel(batch)
        except ValueError:
            raise ApiError(404, f"batch: no science batch {batch}") from None

    def api_submit(self, body: dict) -> dict:
        app, params = body.get("app"), body.get("params")
        if not isinstance(app, str):
            raise ApiError(400, "app: expected an app's name (salvage science apps)")
        if not isinstance(params, list) or not params:
            raise ApiError(400, "params: expected a non-empty list of parameter objects")
        if len(params) > MAX_UNITS_PER_BATCH:
            raise ApiError(400, f"params: expected at most {MAX_UNITS_PER_BATCH} work units in one batch")
        policy = body.get("policy") or {}
        if not isinstance(policy, dict):
            raise ApiError(400, "policy: expected a table of replication settings")
        policy = {k: v for k, v in policy.items() if v is not None}
        try:
            batch = self.store.submit(app, params, idempotency_key=submission_key(body), **policy)
        except (ValueError, TypeError) as err:
            raise ApiError(400, str(err).splitlines()[0]) from None
        self.log(f"science batch {batch} submitted: {len(params)} work units of {app}")
        return {"batch": batch}

    def api_status(self, body: dict) -> dict:
        batch = body.get("batch")
        hosts = self.hosts() if self.hosts else None
        if batch is None:
            batches = self.store.batches()
            if hosts is not None:
                for b in batches:
                    b["waiting"] = [] if b["done"] else waiting(self.store.batch_status(b["batch"]), hosts)
            return {"batches": batches, "credit_by_host": self.store.credit_by_host(),
                    "credit_by_app": self.store.credit_by_app(), "hosts": self.store.host_stats()}
        try:
            status = self.store.batch_status(int(batch))
        except (KeyError, ValueError, TypeError):
            raise ApiError(404, f"batch: no science batch {batch!r}") from None
        return status if hosts is None else {**status, "waiting": waiting(status, hosts)}

    def api_check(self, _body: dict) -> dict:
        return {"violations": self.store.check_consistency()}

    def api_export(self, body: dict) -> dict:
        try:
            batch, fmt = int(body.get("batch")), body.get("format", "jsonl")
            status = self.store.batch_status(batch)
        except (KeyError, ValueError, TypeError):
            raise ApiError(404, f"batch: no science batch {body.get('batch')!r}") from None
        if fmt not in ("jsonl", "csv"):
            raise ApiError(400, f"format: expected csv or jsonl, got {fmt!r}")
        out = io.StringIO()
        self.store.export(batch, fmt, out)
        return {"text": out.getvalue(), "done": status["done"]}


def waiting(status: dict, hosts: list[HostView]) -> list[str]:
    """Why a batch's units wait (see `waiting.why_waiting`), from its status."""
    queue = Queue(unsent=status["results"]["unsent"], quorum=status["quorum"], needs=Needs(**status["needs"]),
                  done=status["done"])
    return why_waiting(queue, hosts)
