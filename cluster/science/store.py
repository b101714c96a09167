"""The BOINC-style work-unit server: durable state of batches, WUs and result copies.

The coordinator owns one ScienceStore and calls it from its loop:
submit() a batch, fetch_work() for a host, report() what hosts sent back,
sweep() for deadlines, host_lost() when a node vanishes. Every call is one
SQLite transaction, so closing and reopening the store (or a crash) loses
nothing that a call returned.

Each call loads the rows it touches with a few set-based queries, runs the
transitioner/validator/credit/trust logic in memory, and writes the changes
back with executemany — no per-row round trips on the hot path.

Semantics (BOINC's, with these choices):
- Unsent copies are a per-WU count (`need`), summed per batch in
  `n_res_unsent`; a copy gets a row, and a host, when sent. One machine never
  has two copies of a WU out or counted, whatever names it runs.
- A WU errors with too_many_errors when its client_error + no_reply copies
  exceed max_error_results; with too_many_total_results when it needs a copy
  but max_total_results were sent; with no_consensus when that happens while
  its successful results disagree.
- When a WU becomes terminal its in-progress copies are aborted. A success
  reported late for an aborted or no_reply copy is still accepted: checked
  against the canonical result (credit if it agrees), or counted towards the
  quorum if the WU is still open.
- host_lost() marks a host's copies no_reply (not client_error): the host
  failed to answer, the app did not fail; both reset the host's trust.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

from cluster.head.db import connect, durable, earlier_reply, remember_reply
from jobs.science.apps.base import Needs
from jobs.science.tasks import Report, Task

from . import assimilate
from .consistency import violations
from .credit import cobblestones
from .placement import host_can_run
from .states import (
    HostCaps,
    Outcome,
    Policy,
    ReportSummary,
    ServerState,
    ValidateState,
    WuError,
    WuState,
)
from .validate import agrees, encode_result, find_consensus, to_json, verified

log = logging.getLogger(__name__)

TRUST_THRESHOLD = 10  # consecutive valid results before a host is trusted (BOINC's default)
# Even a trusted host gets at least this share of its fresh units replicated (BOINC's
# spot checks), so a host that turns liar is caught within a few units.
SPOT_CHECK_SHARE = 0.1
# When a host is caught lying, its single copies validated in this window, at most
# this many, are opened again and checked by other hosts.
RECHECK_WINDOW_S = 7 * 86400.0
RECHECK_MAX = 200
MIN_DELAY_BOUND = 300.0  # seconds; even a tiny WU gets this long before it is reissued
# Default deadline: 10x the run time on a 1 GFLOPS host, the slowest PC we expect.
DELAY_BOUND_PER_GFLOP = 10.0
MAX_ERROR_TEXT = 500

_IN_PROGRESS = int(ServerState.IN_PROGRESS)
_OVER = int(ServerState.OVER)
_SUCCESS = int(Outcome.SUCCESS)
_CLIENT_ERROR = int(Outcome.CLIENT_ERROR)
_NO_REPLY = int(Outcome.NO_REPLY)
_ABORTED = int(Outcome.ABORTED)
_INITIAL = int(ValidateState.INITIAL)
_VALID = int(ValidateState.VALID)
_INVALID = int(ValidateState.INVALID)
_INCONCLUSIVE = int(ValidateState.INCONCLUSIVE)
_ACTIVE = int(WuState.ACTIVE)
_DONE = int(WuState.DONE)
_ERROR = int(WuState.ERROR)

# One row per (WU, copy): the WU's columns, then the copy's (NULLs for a WU with none).
_WU_RESULTS = (
    "SELECT w.id, w.batch_id, w.params, w.flops, w.min_quorum, w.target, w.max_error, w.max_total, w.state,"
    " w.error, w.need, w.single, w.n_sent, w.canonical, w.assim_seq,"
    " r.id, r.host_id, r.server, r.outcome, r.validate, r.received, r.payload, r.credit"
    " FROM sci_wu w LEFT JOIN sci_result r ON r.wu_id = w.id WHERE w.id IN "
)
_R0 = 15  # index of the first result column in a _WU_RESULTS row
_POLICY_FIELDS = {f.name for f in fields(Policy)}
_REPORT_OUTCOMES = {"success": _SUCCESS, "client_error": _CLIENT_ERROR}
_ERROR_NAMES = {int(e): e.name.lower() for e in WuError}

# Counter slots kept per (host, app) and per (batch, host); "current outcome"
# semantics: a late success moves a copy from no_reply/aborted to success.
_C_SUCCESS, _C_ERROR, _C_NOREPLY, _C_ABORTED, _C_VALID, _C_INVALID, _C_CREDIT = range(7)
_OUTCOME_SLOT = {_SUCCESS: _C_SUCCESS, _CLIENT_ERROR: _C_ERROR, _NO_REPLY: _C_NOREPLY, _ABORTED: _C_ABORTED}


@dataclass
class _Batch:
    id: int
    app: str
    version: int
    needs: Needs
    output: str
    finished: bool


class _Res:
    """A result row in memory during one call."""

    __slots__ = ("id", "host_id", "server", "outcome", "validate", "received", "payload", "credit", "obj", "dirty")

    def __init__(self, id, host_id, server, outcome, validate, received, payload, credit):  # noqa: A002
        self.id = id
        self.host_id = host_id
        self.server = server
        self.outcome = outcome
        self.validate = validate
        self.received = received
        self.payload = payload
        self.credit = credit
        self.obj: Any = None  # the decoded payload, when needed
        self.dirty = False


class _Wu:
    __slots__ = ("id", "batch_id", "params", "flops", "min_quorum", "target", "max_error", "max_total",
                 "state", "error", "need", "single", "n_sent", "canonical", "assim_seq", "dirty", "need0")

    def __init__(self, row: tuple):
        (self.id, self.batch_id, self.params, self.flops, self.min_quorum, self.target, self.max_error,
         self.max_total, self.state, self.error, self.need, self.single, self.n_sent, self.canonical,
         self.assim_seq) = row
        self.dirty = False
        self.need0 = self.need  # as stored: the batch's count of unsent copies moves by the difference


class _Call:
    """Changes accumulated by one transaction, written back in bulk at its end."""

    def __init__(self, summary: ReportSummary, now: float):
        self.summary = summary
        self.now = now
        self.batch_host: dict[tuple[int, int], list[float]] = {}
        self.cv: dict[tuple[int, str], int] = {}  # loaded, then updated in order
        self.cv_changed: set[tuple[int, str]] = set()
        self.batch_delta: dict[int, list[int]] = {}  # batch -> [done, error]
        self.caught: set[tuple[int, str]] = set()  # (host, app) that sent an invalid result
        self.withdrawn: dict[int, list[int]] = {}  # batch -> places in its output file given up

    def counters(self, batch_id: int, host_id: int) -> list[float]:
        """The (batch, host) counter deltas; per (host, app) sums are derived at write-back."""
        key = (batch_id, host_id)
        row = self.batch_host.get(key)
        if row is None:
            row = self.batch_host[key] = [0, 0, 0, 0, 0, 0, 0.0]
        return row

    def set_outcome(self, batch: _Batch, r: _Res, outcome: int) -> None:
        row = self.counters(batch.id, r.host_id)
        old = _OUTCOME_SLOT.get(r.outcome)
        if old is not None:
            row[old] -= 1
        row[_OUTCOME_SLOT[outcome]] += 1
        r.server = _OVER
        r.outcome = outcome
        r.dirty = True
        if outcome == _CLIENT_ERROR or outcome == _NO_REPLY:
            key = (r.host_id, batch.app)
            self.cv[key] = 0
            self.cv_changed.add(key)

    def judge(self, batch: _Batch, wu: _Wu, r: _Res, valid: bool) -> None:
        r.dirty = True
        key = (r.host_id, batch.app)
        row = self.counters(batch.id, r.host_id)
        if valid:
            r.validate = _VALID
            r.credit = credit = cobblestones(wu.flops)
            row[_C_VALID] += 1
            row[_C_CREDIT] += credit
            self.cv[key] = self.cv.get(key, 0) + 1
            self.summary.validated += 1
        else:
            r.validate = _INVALID
            row[_C_INVALID] += 1
            self.cv[key] = 0
            self.caught.add(key)
            self.summary.invalid += 1
        self.cv_changed.add(key)


class ScienceStore:
    """Durable BOINC-style work-unit state in one SQLite file (tables prefixed sci_)."""

    def __init__(
        self,
        db_path: str | Path,
        output_dir: str | Path,
        apps: Callable[[str], Any] | None = None,
        rng: random.Random | None = None,
        adaptive_replication: bool = True,
    ):
        if apps is None:
            from jobs.science.apps import get_app  # the real registry, unless a test injects fakes

            apps = get_app
        self._get_app = apps
        self._apps: dict[str, Any] = {}
        self._rng = rng or random.Random()
        self._adaptive = adaptive_replication
        self._lock = threading.RLock()
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.output_dir.glob("*.tmp"):  # a rewrite a crash cut short; its file is whole
            stale.unlink(missing_ok=True)
        # NORMAL: fetches and reports commit many times a second, and losing the last of
        # them to a power cut only sends their copies out again; what the store
        # acknowledges to a user (submit, cancel) commits durably (see db.connect).
        self.conn = connect(db_path, synchronous="NORMAL")
        # This connection does the store's bulk work. A larger WAL lets hot WU and
        # index pages be rewritten in the log many times between checkpoints
        # instead of being copied to the database each time.
        for pragma in ("cache_size=-65536", "temp_store=MEMORY", "mmap_size=268435456", "wal_autocheckpoint=10000"):
            self.conn.execute(f"PRAGMA {pragma}")
        # Reports that were dropped, by reason (unknown, wrong_host, duplicate, ...).
        self.ignored: Counter[str] = Counter()
        self._host_ids: dict[str, int] = {}
        self._host_names: dict[int, str] = {}
        self._machine_hosts: dict[str, list[int]] = {}  # machine -> ids of the names it runs
        for hid, name, machine in self.conn.execute("SELECT id, name, machine FROM sci_host"):
            self._remember_host(hid, name, machine)
        self._batches: dict[int, _Batch] = {}
        for row in self.conn.execute(
            "SELECT id, app, version, need_gpu, gpu_capable, min_vram, min_cc, output, finished FROM sci_batch"
        ):
            self._batches[row[0]] = self._batch_from_row(row)
        # Lines known to be in each batch's output file; reconciled with the DB now.
        self._written: dict[int, int] = {}
        for bid in self._batches:
            self._reconcile_output(bid)

    # ------------------------------------------------------------------ basics

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> "ScienceStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _app(self, name: str) -> Any:
        app = self._apps.get(name)
        if app is None:
            app = self._apps[name] = self._get_app(name)
        return app

    @staticmethod
    def _batch_from_row(row: tuple) -> _Batch:
        bid, app, version, need_gpu, gpu_capable, min_vram, min_cc, output, finished = row
        needs = Needs(bool(need_gpu), bool(gpu_capable), int(min_vram), float(min_cc))
        return _Batch(bid, app, version, needs, output, finished is not None)

    def _remember_host(self, hid: int, name: str, machine: str | None) -> None:
        self._host_ids[name] = hid
        self._host_names[hid] = name
        self._machine_hosts.setdefault(machine or name, []).append(hid)

    def _host_id(self, name: str, create: bool, machine: str = "") -> int | None:
        """The host's id; `create` adds a host first seen now, on `machine`. A name's
        machine is the one it was first seen on: later claims do not move it."""
        hid = self._host_ids.get(name)
        if hid is None and create:
            # Own tiny transaction, so a rolled-back call never leaves a cached id behind.
            with self._tx():
                self.conn.execute("INSERT OR IGNORE INTO sci_host(name, machine) VALUES (?, ?)",
                                  (name, machine or None))
            hid, stored = self.conn.execute("SELECT id, machine FROM sci_host WHERE name=?", (name,)).fetchone()
            self._remember_host(hid, name, stored)
        return hid

    def _same_machine(self, hid: int) -> list[int]:
        """Ids of every name on the machine of host `hid`, itself included."""
        for ids in self._machine_hosts.values():
            if hid in ids:
                return ids
        return [hid]

    # ------------------------------------------------------------------ submit

    def submit(self, app_name: str, params_list: Sequence[dict], *, now: float | None = None,
               idempotency_key: str | None = None, **policy: Any) -> int:
        """Store a batch of WUs of one app; returns the batch id.

        Every params dict is validated first; one bad one raises a one-line
        ValueError naming its index and field, and nothing is stored.
        Policy keywords: min_quorum, target_nresults, max_error_results,
        max_total_results, delay_bound (see states.Policy). A submission whose
        `idempotency_key` was seen before gets that batch back and stores nothing.
        """
        now = time.time() if now is None else now
        app = self._app(app_name)
        unknown = sorted(set(policy) - _POLICY_FIELDS)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown policy field (known: {', '.join(sorted(_POLICY_FIELDS))})")
        pol = Policy(**policy)
        if not params_list:
            raise ValueError("params_list: expected at least one work unit, got 0")
        quorum, target = _check_policy(pol, app)
        rows = []
        for i, params in enumerate(params_list):
            try:
                clean = app.validate_params(params)
                flops = float(app.flops(clean))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"params[{i}]: {exc}") from None
            delay = pol.delay_bound or max(MIN_DELAY_BOUND, DELAY_BOUND_PER_GFLOP * flops / 1e9)
            text = to_json(clean)
            rows.append((text, flops, quorum, target, pol.max_error_results, pol.max_total_results, delay, target))
        needs = app.needs
        with self._lock, durable(self.conn), self._tx():
            earlier = earlier_reply(self.conn, idempotency_key, "science")
            if earlier is not None:
                return earlier["batch"]
            cur = self.conn.execute(
                "INSERT INTO sci_batch(app, version, need_gpu, gpu_capable, min_vram, min_cc, created, n_wu,"
                " n_wu_unsent, n_res_unsent, output) VALUES (?,?,?,?,?,?,?,?,?,?, '')",
                (app.name, app.version, int(needs.gpu), int(needs.gpu_capable), int(needs.min_vram_bytes),
                 float(needs.min_compute_capability), now, len(rows), len(rows), len(rows) * target),
            )
            bid = cur.lastrowid
            output = f"batch-{bid}.jsonl"
            self.conn.execute("UPDATE sci_batch SET output=? WHERE id=?", (output, bid))
            self.conn.executemany(
                f"INSERT INTO sci_wu(batch_id, params, flops, min_quorum, target, max_error, max_total, delay_bound,"
                f" need) VALUES ({bid},?,?,?,?,?,?,?,?)",
                rows,
            )
            remember_reply(self.conn, idempotency_key, "science", {"batch": bid})
        self._batches[bid] = _Batch(bid, app.name, app.version, needs, output, False)
        self._written[bid] = 0
        return bid

    # ------------------------------------------------------------------ dispatch

    def fetch_work(self, host: HostCaps, max_units: int, now: float | None = None) -> list[Task]:
        """Send up to max_units result copies to `host`, oldest batch first.

        Only apps whose needs the host meets; never a copy of a WU of which its
        machine (any name on it) holds a copy in progress or a successful result:
        one machine never counts twice in a quorum. A copy that failed there may be
        retried there. Copies go IN_PROGRESS with deadline now + delay_bound.
        """
        now = time.time() if now is None else now
        if max_units <= 0:
            return []
        with self._lock:
            hid = self._host_id(host.name, create=True, machine=host.machine)
            batches = [b for b in self._batches.values() if not b.finished and host_can_run(b.needs, host)]
            if not batches:
                return []
            tasks: list[Task] = []
            with self._tx():
                next_id = self.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM sci_result").fetchone()[0]
                for batch in batches:
                    room = max_units - len(tasks)
                    if room <= 0:
                        break
                    next_id = self._dispatch_batch(batch, hid, room, now, next_id, tasks)
            return tasks

    def _dispatch_batch(self, batch: _Batch, hid: int, room: int, now: float, next_id: int,
                        tasks: list[Task]) -> int:
        rows = self.conn.execute(
            "SELECT id, params, delay_bound, need, n_sent, min_quorum FROM sci_wu w"
            " WHERE batch_id=? AND need > 0"
            " AND NOT EXISTS (SELECT 1 FROM sci_result r WHERE r.wu_id = w.id"
            f"  AND r.host_id IN (SELECT value FROM json_each(?)) AND (r.server={_IN_PROGRESS} OR r.outcome={_SUCCESS}))"
            " ORDER BY id LIMIT ?",
            (batch.id, to_json(self._same_machine(hid)), room),
        ).fetchall()
        if not rows:
            return next_id
        cv = self.conn.execute(
            "SELECT cv FROM sci_host_app WHERE host_id=? AND app=?", (hid, batch.app)
        ).fetchone()
        cv = cv[0] if cv else 0
        # Adaptive replication: a trusted host's fresh WU runs as a single copy
        # with probability 1 - 1/cv (BOINC), but never more than 1 - SPOT_CHECK_SHARE;
        # decided now, at dispatch.
        p_single = min(1.0 - 1.0 / cv, 1.0 - SPOT_CHECK_SHARE) if self._adaptive and cv >= TRUST_THRESHOLD else 0.0
        rand = self._rng.random
        inserts = []
        updates = []
        fresh = 0
        unsent = 0  # copies no longer owed: this one, and a single copy's others
        app, version = batch.app, batch.version
        for wid, params, delay, need, n_sent, quorum in rows:
            rid = next_id
            next_id += 1
            single = 0
            if n_sent == 0:
                fresh += 1
                if p_single and quorum > 1 and rand() < p_single:
                    single = 1
            inserts.append((rid, wid, hid, now + delay))
            updates.append((0 if single else need - 1, single, wid))
            unsent += need if single else 1
            tasks.append(Task(rid, wid, app, version, params))
        bid = batch.id
        self.conn.executemany(
            f"INSERT INTO sci_result(id, wu_id, batch_id, host_id, server, sent, deadline)"
            f" VALUES (?,?,{bid},?,{_IN_PROGRESS},{now!r},?)",
            inserts,
        )
        self.conn.executemany("UPDATE sci_wu SET need=?, single=?, n_sent=n_sent+1 WHERE id=?", updates)
        self.conn.execute(
            "UPDATE sci_batch SET n_wu_unsent = n_wu_unsent - ?, n_res_unsent = n_res_unsent - ?,"
            " started = coalesce(started, ?) WHERE id=?",
            (fresh, unsent, now, bid),
        )
        self.conn.execute(
            "INSERT INTO sci_batch_host(batch_id, host_id, n_sent) VALUES (?,?,?)"
            " ON CONFLICT(batch_id, host_id) DO UPDATE SET n_sent = n_sent + excluded.n_sent",
            (bid, hid, len(rows)),
        )
        return next_id

    # ------------------------------------------------------------------ reports

    def report(self, host: str, reports: Sequence[Report], now: float | None = None) -> ReportSummary:
        """Apply a host's reports: outcomes, validation, credit, trust, assimilation.

        One transaction. Reports for unknown ids, for copies sent to another
        host, duplicates and malformed ones are dropped and counted in
        self.ignored (and the returned summary), never raised.
        """
        now = time.time() if now is None else now
        summary = ReportSummary()
        with self._lock:
            hid = self._host_id(host, create=False)
            ids: list[int] = []
            parsed: list[tuple[int, int, Any]] = []
            for rep in reports:
                try:
                    rid, outcome, payload = (
                        (rep.result_id, rep.outcome, rep.payload) if isinstance(rep, Report) else rep
                    )
                    code = _REPORT_OUTCOMES[outcome]
                    if isinstance(rid, bool) or not isinstance(rid, int):
                        raise TypeError
                except (KeyError, TypeError, ValueError):
                    _ignore(summary, "malformed")
                    continue
                ids.append(rid)
                parsed.append((rid, code, payload))
            if not parsed:
                self.ignored.update(summary.ignored)
                return summary
            with self._tx():
                # Every WU reported on with all its copies, in one query.
                rows = self.conn.execute(
                    _WU_RESULTS + "(SELECT wu_id FROM sci_result WHERE id IN (SELECT value FROM json_each(?)))",
                    (to_json(ids),),
                ).fetchall()
                known = {row[_R0]: row for row in rows}
                machine = set(self._same_machine(hid)) if hid is not None else set()
                events: dict[int, tuple[int, Any]] = {}
                for rid, code, payload in parsed:
                    row = known.get(rid)
                    if row is None:
                        _ignore(summary, "unknown")
                    elif row[_R0 + 1] != hid:
                        _ignore(summary, "wrong_host")
                    elif rid in events:
                        _ignore(summary, "duplicate")
                    elif row[_R0 + 2] == _IN_PROGRESS:
                        events[rid] = (code, payload)
                    elif code == _SUCCESS and row[_R0 + 3] in (_NO_REPLY, _ABORTED):
                        # A late success for a copy given up on (deadline, lost host,
                        # aborted) is still useful, checked like any other, unless this
                        # machine has another copy of the unit out or counted already.
                        if any(o[_R0] != rid and o[0] == row[0] and o[_R0 + 1] in machine
                               and (o[_R0 + 2] == _IN_PROGRESS or o[_R0 + 3] == _SUCCESS) for o in rows):
                            _ignore(summary, "duplicate")
                        else:
                            events[rid] = (code, payload)
                    else:
                        _ignore(summary, "duplicate")
                if events:
                    caught = self._process(events, now, summary, rows)
                    for host_id, app in caught:
                        self._recheck(host_id, app, now)
            self.ignored.update(summary.ignored)
            self._flush_outputs()
            return summary

    def sweep(self, now: float | None = None) -> ReportSummary:
        """The transitioner's timer: copies past their deadline become no_reply and are reissued."""
        now = time.time() if now is None else now
        with self._lock:
            with self._tx():
                rows = self.conn.execute(
                    f"SELECT id, wu_id FROM sci_result WHERE server={_IN_PROGRESS} AND deadline < ?", (now,)
                ).fetchall()
                summary = self._expire(rows, now)
            self._flush_outputs()
            return summary

    def host_lost(self, name: str, now: float | None = None) -> ReportSummary:
        """A node vanished: its in-progress copies become no_reply now (as if their
        deadline had passed: the host did not answer, the app did not fail) and
        are reissued to other hosts at once. A late report from it still counts."""
        now = time.time() if now is None else now
        with self._lock:
            hid = self._host_id(name, create=False)
            if hid is None:
                return ReportSummary()
            with self._tx():
                rows = self.conn.execute(
                    f"SELECT id, wu_id FROM sci_result WHERE server={_IN_PROGRESS} AND host_id=?", (hid,)
                ).fetchall()
                summary = self._expire(rows, now)
            self._flush_outputs()
            return summary

    def release(self, host: str, result_ids: Sequence[int], now: float | None = None) -> int:
        """Take back copies a host will not finish (it yielded to training) with no
        penalty: they are unsent again and may go to any host, this one included.
        Returns how many were released."""
        now = time.time() if now is None else now
        with self._lock:
            hid = self._host_id(host, create=False)
            if hid is None or not result_ids:
                return 0
            with self._tx():
                rows = self.conn.execute(
                    f"SELECT id, wu_id, batch_id FROM sci_result WHERE server={_IN_PROGRESS} AND host_id=?"
                    " AND id IN (SELECT value FROM json_each(?))",
                    (hid, json.dumps([int(i) for i in result_ids])),
                ).fetchall()
                if not rows:
                    return 0
                self.conn.executemany("DELETE FROM sci_result WHERE id=?", [(r[0],) for r in rows])
                self.conn.executemany("UPDATE sci_wu SET n_sent = n_sent - 1 WHERE id=?", [(r[1],) for r in rows])
                per_batch = Counter(r[2] for r in rows)
                self.conn.executemany(
                    "UPDATE sci_batch_host SET n_sent = n_sent - ? WHERE batch_id=? AND host_id=?",
                    [(n, bid, hid) for bid, n in per_batch.items()],
                )
                # WUs now never sent count as unsent WUs again.
                self.conn.executemany(
                    "UPDATE sci_batch SET n_wu_unsent = n_wu_unsent + ? WHERE id=?",
                    self.conn.execute(
                        "SELECT count(*), batch_id FROM sci_wu WHERE n_sent=0"
                        " AND id IN (SELECT value FROM json_each(?)) GROUP BY batch_id",
                        (json.dumps([r[1] for r in rows]),),
                    ).fetchall(),
                )
                # Recompute each WU's unsent count (and undo a single-copy decision).
                self._process({}, now, ReportSummary(), self._load({r[1] for r in rows}))
            return len(rows)

    def _recheck(self, host_id: int, app: str, now: float) -> None:
        """Host `host_id` was just caught sending an invalid `app` result: its trust is
        gone (cv 0), its single copies in flight are replicated again, and its recent
        single copies that became canonical are opened again, their credit taken
        back, so that other hosts check them. A result that holds up is credited
        again; one that does not is outvoted like any other."""
        done = [r[0] for r in self.conn.execute(
            "SELECT w.id FROM sci_wu w JOIN sci_result r ON r.id = w.canonical JOIN sci_batch b ON b.id = w.batch_id"
            f" WHERE w.single = 1 AND w.state = {_DONE} AND r.host_id = ? AND b.app = ? AND r.received >= ?"
            " ORDER BY r.received DESC LIMIT ?", (host_id, app, now - RECHECK_WINDOW_S, RECHECK_MAX))]
        flying = [r[0] for r in self.conn.execute(
            "SELECT w.id FROM sci_wu w JOIN sci_result r ON r.wu_id = w.id JOIN sci_batch b ON b.id = w.batch_id"
            f" WHERE w.single = 1 AND w.state = {_ACTIVE} AND r.host_id = ? AND r.server = {_IN_PROGRESS}"
            " AND b.app = ?", (host_id, app))]
        if not done and not flying:
            return
        self._process({}, now, ReportSummary(), self._load(set(done) | set(flying)), reopen=set(done) | set(flying))
        log.info("science: host %s caught sending an invalid %s result: %d single copies reopened, %d in flight "
                 "replicated", self._host_names.get(host_id), app, len(done), len(flying))

    def _reopen(self, call: _Call, batch: _Batch, wu: _Wu, results: list[_Res]) -> None:
        """A single-copy WU goes back to normal replication; if it was finished, its
        canonical result loses its credit and its place in the output file and waits,
        as a candidate, for the copies that will check it."""
        wu.single = 0
        wu.dirty = True
        if wu.state != _DONE:
            return
        canon = next(r for r in results if r.id == wu.canonical)
        row = call.counters(batch.id, canon.host_id)
        row[_C_VALID] -= 1
        row[_C_CREDIT] -= canon.credit
        canon.credit = 0.0
        canon.validate = _INCONCLUSIVE
        canon.dirty = True
        call.withdrawn.setdefault(batch.id, []).append(wu.assim_seq)
        call.batch_delta.setdefault(batch.id, [0, 0])[0] -= 1
        wu.state = _ACTIVE
        wu.canonical = None
        wu.assim_seq = None

    def _expire(self, rows: list[tuple[int, int]], now: float) -> ReportSummary:
        summary = ReportSummary()
        if rows:
            self._process({rid: (_NO_REPLY, None) for rid, _ in rows}, now, summary, self._load({w for _, w in rows}))
        return summary

    # ------------------------------------------------------------------ the state machine

    def _load(self, wu_ids: set[int]) -> list[tuple]:
        return self.conn.execute(
            _WU_RESULTS + "(SELECT value FROM json_each(?))", (to_json(sorted(wu_ids)),)
        ).fetchall()

    def _process(self, events: dict[int, tuple[int, Any]], now: float, summary: ReportSummary,
                 rows: list[tuple], reopen: set[int] | None = None) -> set[tuple[int, str]]:
        """Apply events to their WUs, then transition/validate/credit every touched WU;
        returns the (host, app) pairs caught sending an invalid result.

        `rows`: _WU_RESULTS rows of every WU concerned. `reopen`: finished WUs to open
        again because their single copy came from a host since caught lying."""
        wus: dict[int, _Wu] = {}
        by_wu: dict[int, list[_Res]] = {}
        host_ids: set[int] = set()
        for row in rows:
            wid = row[0]
            group = by_wu.get(wid)
            if group is None:
                wus[wid] = _Wu(row[:_R0])
                group = by_wu[wid] = []
            if row[_R0] is not None:
                group.append(_Res(*row[_R0:]))
                host_ids.add(row[_R0 + 1])
        call = _Call(summary, now)
        for hid, app, cv in self.conn.execute(
            "SELECT host_id, app, cv FROM sci_host_app WHERE host_id IN (SELECT value FROM json_each(?))",
            (to_json(sorted(host_ids)),),
        ):
            call.cv[(hid, app)] = cv
        assimilated: dict[int, int] = {}
        batches = self._batches
        for wid, wu in wus.items():
            if reopen and wid in reopen:
                self._reopen(call, batches[wu.batch_id], wu, by_wu[wid])
            self._transition(call, batches[wu.batch_id], wu, by_wu[wid], events, assimilated)
        self._write_back(call, wus.values(), by_wu, assimilated)
        return call.caught

    def _transition(self, call: _Call, batch: _Batch, wu: _Wu, results: list[_Res],
                    events: dict[int, tuple[int, Any]], assimilated: dict[int, int]) -> None:
        app = self._app(batch.app)
        summary = call.summary
        params: dict | None = None
        fresh: list[_Res] = []  # successes that arrived in this call
        for r in results:
            ev = events.get(r.id)
            if ev is None:
                continue
            code, payload = ev
            if code == _SUCCESS:
                if r.server == _OVER and wu.state == _ERROR:
                    _ignore(summary, "late")  # the WU already failed; nothing to check against
                    continue
                summary.accepted += 1
                call.set_outcome(batch, r, _SUCCESS)
                r.received = call.now
                text = encode_result(app, payload)
                if text is not None:  # every app's own check, before any quorum
                    if params is None:
                        params = json.loads(wu.params)
                    if not verified(app, params, payload):
                        text = None
                if text is None:
                    # malformed, oversized, or failed verification: invalid, no quorum needed
                    r.payload = None
                    call.judge(batch, wu, r, False)
                else:
                    r.payload = text
                    r.obj = payload
                    fresh.append(r)
            else:
                summary.accepted += 1
                call.set_outcome(batch, r, code)
                if code == _CLIENT_ERROR:
                    r.received = call.now
                    r.payload = str(payload)[:MAX_ERROR_TEXT] if payload is not None else None
        if wu.state == _DONE:
            # Late results are checked against the canonical one.
            if fresh:
                canon = next(r for r in results if r.id == wu.canonical)
                canon_obj = json.loads(canon.payload)
                for r in fresh:
                    call.judge(batch, wu, r, r.payload == canon.payload or agrees(app.compare, canon_obj, r.obj))
            return
        if wu.state == _ERROR:
            return
        self._validate_or_reissue(call, batch, app, wu, results, assimilated)

    def _validate_or_reissue(self, call: _Call, batch: _Batch, app: Any, wu: _Wu, results: list[_Res],
                             assimilated: dict[int, int]) -> None:
        cands = [r for r in results
                 if r.outcome == _SUCCESS and (r.validate == _INITIAL or r.validate == _INCONCLUSIVE)]
        quorum = 1 if wu.single else wu.min_quorum
        inconclusive = False
        if len(cands) >= quorum:
            first = cands[0].payload
            if all(r.payload == first for r in cands):
                # Identical JSON agrees under any sane compare(): skip decoding.
                found: tuple[int, list[bool]] | None = (0, [True] * len(cands))
            else:
                for r in cands:
                    if r.obj is None:
                        r.obj = json.loads(r.payload)
                found = find_consensus(app.compare, [r.obj for r in cands], quorum)
            if found is not None:
                _, agree = found
                # Of the results that agree, the most trusted host's is canonical, then the first sent.
                idx = min((i for i, ok in enumerate(agree) if ok),
                          key=lambda i: (-call.cv.get((cands[i].host_id, batch.app), 0), cands[i].id))
                for r, ok in zip(cands, agree):
                    call.judge(batch, wu, r, ok)
                wu.canonical = cands[idx].id
                self._finish(call, batch, wu, results, _DONE, int(WuError.NONE))
                seq = assimilated.get(batch.id)
                if seq is None:
                    seq = self.conn.execute(
                        "SELECT n_assimilated FROM sci_batch WHERE id=?", (batch.id,)
                    ).fetchone()[0]
                wu.assim_seq = seq
                assimilated[batch.id] = seq + 1
                return
            inconclusive = True
            for r in cands:
                if r.validate != _INCONCLUSIVE:
                    r.validate = _INCONCLUSIVE
                    r.dirty = True
        n_err = 0
        in_prog = 0
        for r in results:
            if r.server == _IN_PROGRESS:
                in_prog += 1
            elif r.outcome == _CLIENT_ERROR or r.outcome == _NO_REPLY:
                n_err += 1
        if n_err > wu.max_error:
            self._finish(call, batch, wu, results, _ERROR, int(WuError.TOO_MANY_ERRORS))
            return
        if wu.single and in_prog + len(cands) == 0:
            wu.single = 0  # the trusted single copy failed: back to normal replication
            wu.dirty = True
        want = 1 if wu.single else wu.target
        if inconclusive:
            want = max(want, len(cands) + 1)  # one more opinion
        deficit = max(0, want - in_prog - len(cands))
        need = min(deficit, wu.max_total - wu.n_sent)
        if deficit and not need and not in_prog:
            error = WuError.NO_CONSENSUS if inconclusive else WuError.TOO_MANY_TOTAL_RESULTS
            self._finish(call, batch, wu, results, _ERROR, int(error))
            return
        if need != wu.need:
            wu.need = need
            wu.dirty = True

    def _finish(self, call: _Call, batch: _Batch, wu: _Wu, results: list[_Res], state: int, error: int) -> None:
        wu.state = state
        wu.error = error
        wu.need = 0
        wu.dirty = True
        for r in results:
            if r.server == _IN_PROGRESS:
                call.set_outcome(batch, r, _ABORTED)  # not needed any more
        delta = call.batch_delta.setdefault(batch.id, [0, 0])
        if state == _DONE:
            delta[0] += 1
            call.summary.wus_done += 1
        else:
            delta[1] += 1
            call.summary.wus_error += 1

    def _write_back(self, call: _Call, wus: Iterable[_Wu], by_wu: dict[int, list[_Res]],
                    assimilated: dict[int, int]) -> None:
        conn = self.conn
        res_rows = [
            (r.server, r.outcome, r.validate, r.received, r.payload, r.credit, r.id)
            for rs in by_wu.values() for r in rs if r.dirty
        ]
        if res_rows:
            conn.executemany(
                "UPDATE sci_result SET server=?, outcome=?, validate=?, received=?, payload=?, credit=? WHERE id=?",
                res_rows,
            )
        wu_rows = []
        unsent: dict[int, int] = {}  # batch -> change in copies owed
        for w in wus:
            if w.dirty:
                wu_rows.append((w.state, w.error, w.need, w.single, w.canonical, w.assim_seq, w.id))
                if w.need != w.need0:
                    unsent[w.batch_id] = unsent.get(w.batch_id, 0) + w.need - w.need0
        if wu_rows:
            conn.executemany(
                "UPDATE sci_wu SET state=?, error=?, need=?, single=?, canonical=?, assim_seq=? WHERE id=?", wu_rows
            )
        conn.executemany("UPDATE sci_batch SET n_res_unsent = n_res_unsent + ? WHERE id=?",
                         [(d, bid) for bid, d in unsent.items() if d])
        for bid, (done, err) in call.batch_delta.items():
            conn.execute(
                "UPDATE sci_batch SET n_done=n_done+?, n_error=n_error+?,"
                " finished = CASE WHEN n_done+n_error+?+? >= n_wu THEN coalesce(finished, ?) END WHERE id=?",
                (done, err, done, err, call.now, bid),
            )
        for bid, seq in assimilated.items():
            conn.execute("UPDATE sci_batch SET n_assimilated=? WHERE id=?", (seq, bid))
        for bid, places in call.withdrawn.items():
            # The output file keeps the database's order with no gaps: later results move
            # up, and the file is written again from the database after this commit.
            for place in sorted(places, reverse=True):
                conn.execute("UPDATE sci_wu SET assim_seq = assim_seq - 1 WHERE batch_id=? AND assim_seq > ?",
                             (bid, place))
            conn.execute("UPDATE sci_batch SET n_assimilated = n_assimilated - ?, rewrite = 1 WHERE id=?",
                         (len(places), bid))
            self._written.pop(bid, None)
        host_app: dict[tuple[int, str], list[float]] = {}
        for (bid, hid), c in call.batch_host.items():
            row = host_app.setdefault((hid, self._batches[bid].app), [0, 0, 0, 0, 0, 0, 0.0])
            for i, v in enumerate(c):
                row[i] += v
        keys = set(host_app) | call.cv_changed
        if keys:
            zero = [0, 0, 0, 0, 0, 0, 0.0]
            conn.executemany(
                "INSERT INTO sci_host_app(host_id, app, cv, n_success, n_error, n_noreply, n_valid, n_invalid, credit)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(host_id, app) DO UPDATE SET"
                " cv=excluded.cv, n_success=n_success+excluded.n_success, n_error=n_error+excluded.n_error,"
                " n_noreply=n_noreply+excluded.n_noreply, n_valid=n_valid+excluded.n_valid,"
                " n_invalid=n_invalid+excluded.n_invalid, credit=credit+excluded.credit",
                [
                    (k[0], k[1], call.cv.get(k, 0), c[_C_SUCCESS], c[_C_ERROR], c[_C_NOREPLY], c[_C_VALID],
                     c[_C_INVALID], c[_C_CREDIT])
                    for k in keys
                    for c in (host_app.get(k, zero),)
                ],
            )
        if call.batch_host:
            conn.executemany(
                "INSERT INTO sci_batch_host(batch_id, host_id, n_success, n_error, n_noreply, n_aborted, n_valid,"
                " n_invalid, credit) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(batch_id, host_id) DO UPDATE SET"
                " n_success=n_success+excluded.n_success, n_error=n_error+excluded.n_error,"
                " n_noreply=n_noreply+excluded.n_noreply, n_aborted=n_aborted+excluded.n_aborted,"
                " n_valid=n_valid+excluded.n_valid, n_invalid=n_invalid+excluded.n_invalid,"
                " credit=credit+excluded.credit",
                [(k[0], k[1], *c) for k, c in call.batch_host.items()],
            )
        for bid in call.batch_delta:
            finished = conn.execute("SELECT finished FROM sci_batch WHERE id=?", (bid,)).fetchone()[0]
            self._batches[bid].finished = finished is not None

    # ------------------------------------------------------------------ assimilator

    def _canonical_rows(self, batch_id: int, from_seq: int = 0) -> list[assimilate.Row]:
        return self.conn.execute(
            "SELECT w.id, w.params, r.payload, h.name FROM sci_wu w"
            " JOIN sci_result r ON r.id = w.canonical JOIN sci_host h ON h.id = r.host_id"
            " WHERE w.batch_id=? AND w.assim_seq >= ? ORDER BY w.assim_seq",
            (batch_id, from_seq),
        ).fetchall()

    def _reconcile_output(self, batch_id: int) -> None:
        path = self.output_path(batch_id)
        n, rewrite = self.conn.execute("SELECT n_assimilated, rewrite FROM sci_batch WHERE id=?",
                                       (batch_id,)).fetchone()
        try:
            lines = assimilate.count_lines(path)
            if lines > n or rewrite:
                # The file is ahead of the database (its last commits were lost), or results
                # were withdrawn from it: rebuild it.
                self._written[batch_id] = assimilate.rewrite_rows(path, self._canonical_rows(batch_id))
                if rewrite:
                    with self._tx():
                        self.conn.execute("UPDATE sci_batch SET rewrite = 0 WHERE id=?", (batch_id,))
                return
        except OSError as exc:  # the results are safe in the database; tried again next time
            log.warning("science: cannot write %s: %s", path, exc)
            return
        self._written[batch_id] = lines
        self._flush_output(batch_id, n)

    def _flush_output(self, batch_id: int, n_assimilated: int) -> None:
        written = self._written.get(batch_id, 0)
        if n_assimilated > written:
            rows = self._canonical_rows(batch_id, written)
            try:
                self._written[batch_id] = written + assimilate.append_rows(self.output_path(batch_id), rows)
            except OSError as exc:
                # The results are safe in the database; count the file's lines
                # again before the next append, in case this one was torn.
                log.warning("science: cannot write %s: %s", self.output_path(batch_id), exc)
                self._written.pop(batch_id, None)

    def _flush_outputs(self) -> None:
        """Append committed canonical results that are not in their output files yet."""
        for bid, n in self.conn.execute("SELECT id, n_assimilated FROM sci_batch").fetchall():
            if bid not in self._written:
                self._reconcile_output(bid)
            elif n > self._written[bid]:
                self._flush_output(bid, n)

    def output_path(self, batch_id: int) -> Path:
        return self.output_dir / self._batch(batch_id).output

    def export(self, batch_id: int, fmt: str = "jsonl", out: str | Path | IO[str] | None = None) -> Path | int:
        """Write every canonical result of a batch as JSONL or CSV, from the database.

        `out` is a path (returned) or an open text file (the row count is returned);
        by default a file beside the batch output."""
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"fmt: expected 'jsonl' or 'csv', got {fmt!r}")
        with self._lock:
            rows = self._canonical_rows(batch_id)
        if out is None:
            out = self.output_dir / f"batch-{batch_id}-export.{fmt}"
        if isinstance(out, (str, Path)):
            with open(out, "w", encoding="utf-8", newline="") as fh:
                assimilate.write_export(rows, fmt, fh)
            return Path(out)
        return assimilate.write_export(rows, fmt, out)

    # ------------------------------------------------------------------ status and stats

    def unsent_copies(self) -> int:
        """Result copies still owed across the open batches (a sum over the batch rows)."""
        with self._lock:
            return self.conn.execute(
                "SELECT coalesce(sum(n_res_unsent), 0) FROM sci_batch WHERE finished IS NULL").fetchone()[0]

    def _batch(self, batch_id: int) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise ValueError(f"batch_id: no batch {batch_id}")
        return batch

    def batch_status(self, batch_id: int, now: float | None = None) -> dict[str, Any]:
        """WU and result counts, credit by host, ETA, and `done` once every WU is terminal."""
        now = time.time() if now is None else now
        batch = self._batch(batch_id)
        with self._lock:
            conn = self.conn
            n_wu, unsent_wu, unsent, n_done, n_error, started, finished, created = conn.execute(
                "SELECT n_wu, n_wu_unsent, n_res_unsent, n_done, n_error, started, finished, created"
                " FROM sci_batch WHERE id=?",
                (batch_id,),
            ).fetchone()
            # A batch's units share one policy: any unit still owed copies has its quorum.
            owed = conn.execute(
                "SELECT min_quorum FROM sci_wu WHERE batch_id=? AND need > 0 LIMIT 1", (batch_id,)
            ).fetchone()
            quorum = owed[0] if owed else 0
            errors = {
                _ERROR_NAMES[e]: n
                for e, n in conn.execute(
                    f"SELECT error, count(*) FROM sci_wu WHERE batch_id=? AND state={_ERROR} GROUP BY error",
                    (batch_id,),
                )
            }
            totals = Counter()
            credit: dict[str, float] = {}
            for hid, *vals in conn.execute(
                "SELECT host_id, n_sent, n_success, n_error, n_noreply, n_aborted, n_valid, n_invalid, credit"
                " FROM sci_batch_host WHERE batch_id=?",
                (batch_id,),
            ):
                for name, v in zip(("sent", "success", "client_error", "no_reply", "aborted", "valid", "invalid"),
                                   vals):
                    totals[name] += v
                if vals[-1]:
                    credit[self._host_names[hid]] = vals[-1]
        terminal = n_done + n_error
        over = totals["success"] + totals["client_error"] + totals["no_reply"] + totals["aborted"]
        eta: float | None
        if terminal >= n_wu:
            eta = 0.0
        elif started is not None and terminal > 0 and now > started:
            eta = (n_wu - terminal) * (now - started) / terminal
        else:
            eta = None
        return {
            "batch": batch_id,
            "app": batch.app,
            "version": batch.version,
            "wus": {
                "total": n_wu,
                "done": n_done,
                "error": n_error,
                "in_progress": n_wu - terminal - unsent_wu,
                "unsent": unsent_wu,
            },
            "wu_errors": errors,
            "results": {
                "unsent": unsent,
                "in_progress": totals["sent"] - over,
                "success": totals["success"],
                "client_error": totals["client_error"],
                "no_reply": totals["no_reply"],
                "aborted": totals["aborted"],
                "valid": totals["valid"],
                "invalid": totals["invalid"],
            },
            "credit_by_host": credit,
            "needs": asdict(batch.needs),
            "quorum": quorum,  # of the units that wait to be sent (0: none waits)
            "created": created,
            "started": started,
            "finished": finished,
            "eta_seconds": eta,
            "done": terminal >= n_wu,
            "output": str(self.output_path(batch_id)),
        }

    def batches(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT id, app, version, n_wu, n_done, n_error, created, finished FROM sci_batch ORDER BY id"
            ).fetchall()
        return [
            {"batch": bid, "app": app, "version": version, "wus": n_wu, "done_wus": done, "error_wus": err,
             "created": created, "finished": finished, "done": done + err >= n_wu}
            for bid, app, version, n_wu, done, err, created, finished in rows
        ]

    def credit_by_host(self) -> dict[str, float]:
        """Credit granted so far, per host that earned any."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT host_id, sum(credit) FROM sci_host_app GROUP BY host_id HAVING sum(credit) > 0"
            ).fetchall()
        return {self._host_names[h]: c for h, c in rows}

    def credit_by_app(self) -> dict[str, float]:
        with self._lock:
            return dict(self.conn.execute(
                "SELECT app, sum(credit) FROM sci_host_app GROUP BY app HAVING sum(credit) > 0"
            ).fetchall())

    def host_stats(self) -> list[dict[str, Any]]:
        """Per (host, app) counters for metrics: results by outcome and validate state,
        consecutive valid results, trust and credit."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT host_id, app, cv, n_success, n_error, n_noreply, n_valid, n_invalid, credit"
                " FROM sci_host_app ORDER BY host_id, app"
            ).fetchall()
        return [
            {"host": self._host_names[h], "app": app, "consecutive_valid": cv, "trusted": cv >= TRUST_THRESHOLD,
             "success": s, "client_error": e, "no_reply": nr, "valid": v, "invalid": i, "credit": c}
            for h, app, cv, s, e, nr, v, i, c in rows
        ]

    def host_reliability(self, name: str) -> float:
        """Fraction of a host's finished copies that turned out valid, smoothed
        (Laplace) so a new host starts at 0.5; the coordinator sorts hosts by it."""
        with self._lock:
            hid = self._host_ids.get(name)
            if hid is None:
                return 0.5
            valid, bad = self.conn.execute(
                "SELECT coalesce(sum(n_valid), 0), coalesce(sum(n_invalid + n_error + n_noreply), 0)"
                " FROM sci_host_app WHERE host_id=?",
                (hid,),
            ).fetchone()
        return (valid + 1) / (valid + bad + 2)

    def in_progress(self, name: str) -> list[int]:
        """Result ids currently out on a host."""
        with self._lock:
            hid = self._host_ids.get(name)
            if hid is None:
                return []
            return [r[0] for r in self.conn.execute(
                f"SELECT id FROM sci_result WHERE host_id=? AND server={_IN_PROGRESS}", (hid,))]

    def cancel(self, batch_id: int, now: float | None = None) -> dict[str, int]:
        """Withdraw a batch: its open work units end as cancelled (no more copies go
        out; copies out are aborted, and their late reports are ignored); units
        already validated keep their results and their hosts their credit."""
        now = time.time() if now is None else now
        self._batch(batch_id)
        with self._lock:
            with durable(self.conn), self._tx():
                open_wus = {r[0] for r in self.conn.execute(
                    f"SELECT id FROM sci_wu WHERE batch_id=? AND state={_ACTIVE}", (batch_id,))}
                rows = self._load(open_wus) if open_wus else []
                wus: dict[int, _Wu] = {}
                by_wu: dict[int, list[_Res]] = {}
                for row in rows:
                    wu = wus.setdefault(row[0], _Wu(row[:_R0]))
                    group = by_wu.setdefault(row[0], [])
                    if row[_R0] is not None:
                        group.append(_Res(*row[_R0:]))
                call = _Call(ReportSummary(), now)
                batch = self._batches[batch_id]
                aborted = 0
                for wid, wu in wus.items():
                    aborted += sum(r.server == _IN_PROGRESS for r in by_wu[wid])
                    self._finish(call, batch, wu, by_wu[wid], _ERROR, int(WuError.CANCELLED))
                self._write_back(call, wus.values(), by_wu, {})
                never_sent = sum(wu.n_sent == 0 for wu in wus.values())
                self.conn.execute("UPDATE sci_batch SET n_wu_unsent = n_wu_unsent - ? WHERE id=?",
                                  (never_sent, batch_id))
            self._flush_outputs()
        return {"withdrawn": len(wus), "aborted": aborted}

    def copies_of(self, batch_id: int, result_ids: Sequence[int]) -> set[int]:
        """Which of these result copies belong to the batch."""
        with self._lock:
            return {r[0] for r in self.conn.execute(
                "SELECT id FROM sci_result WHERE batch_id=? AND id IN (SELECT value FROM json_each(?))",
                (batch_id, to_json([int(i) for i in result_ids])))}

    # ------------------------------------------------------------------ consistency

    def check_consistency(self) -> list[str]:
        """Every invariant violation found, as one line each (empty list = consistent)."""
        with self._lock:
            self._flush_outputs()
            return violations(self.conn, {bid: self.output_path(bid) for bid in self._batches})


def _ignore(summary: ReportSummary, reason: str) -> None:
    summary.ignored[reason] = summary.ignored.get(reason, 0) + 1


def _check_policy(pol: Policy, app: Any) -> tuple[int, int]:
    """Validate a batch's replication policy; returns (min_quorum, target_nresults)."""
    default_quorum = app.default_quorum
    quorum = default_quorum if pol.min_quorum is None else pol.min_quorum
    target = max(quorum, default_quorum) if pol.target_nresults is None else pol.target_nresults
    for field, value, lo in (("min_quorum", quorum, 1), ("target_nresults", target, quorum),
                             ("max_error_results", pol.max_error_results, 0),
                             ("max_total_results", pol.max_total_results, target)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{field}: expected an integer >= {lo}, got {value!r}")
    if pol.delay_bound is not None and not (
        isinstance(pol.delay_bound, (int, float)) and math.isfinite(pol.delay_bound) and pol.delay_bound > 0
    ):
        raise ValueError(f"delay_bound: expected a positive number of seconds, got {pol.delay_bound!r}")
    return quorum, target
