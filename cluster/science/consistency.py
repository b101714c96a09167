"""Invariants of the science store, checked with plain SQL (for tests and chaos runs)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from .states import Outcome, ServerState, ValidateState, WuState

_IP = int(ServerState.IN_PROGRESS)
_OK = int(Outcome.SUCCESS)
_VALID = int(ValidateState.VALID)
_DONE = int(WuState.DONE)
_ACTIVE = int(WuState.ACTIVE)
_EPS = 1e-6

# (description, query returning offending rows); each row becomes one violation line.
_CHECKS: list[tuple[str, str]] = [
    ("WU {0}: terminal but copy {1} still in progress",
     f"SELECT w.id, r.id FROM sci_wu w JOIN sci_result r ON r.wu_id = w.id WHERE w.state != {_ACTIVE}"
     f" AND r.server = {_IP}"),
    ("WU {0}: {2} copies out or counted on machine {1}",
     f"SELECT r.wu_id, coalesce(h.machine, h.name), count(*) FROM sci_result r JOIN sci_host h ON h.id = r.host_id"
     f" WHERE r.server = {_IP} OR r.outcome = {_OK} GROUP BY r.wu_id, coalesce(h.machine, h.name)"
     f" HAVING count(*) > 1"),
    ("WU {0}: canonical result {1} is not a valid success of this WU",
     f"SELECT w.id, w.canonical FROM sci_wu w LEFT JOIN sci_result r ON r.id = w.canonical"
     f" WHERE w.canonical IS NOT NULL AND (r.id IS NULL OR r.wu_id != w.id OR r.outcome != {_OK}"
     f" OR r.validate != {_VALID})"),
    ("WU {0}: state {1} does not match canonical {2}",
     f"SELECT id, state, canonical FROM sci_wu WHERE (state = {_DONE}) != (canonical IS NOT NULL)"),
    ("WU {0}: done but never assimilated",
     f"SELECT id FROM sci_wu WHERE state = {_DONE} AND assim_seq IS NULL"),
    ("WU {0}: n_sent {1} but {2} result rows",
     "SELECT w.id, w.n_sent, (SELECT count(*) FROM sci_result r WHERE r.wu_id = w.id) AS n FROM sci_wu w"
     " WHERE w.n_sent != n"),
    ("WU {0}: need {1} in state {2}",
     f"SELECT id, need, state FROM sci_wu WHERE need < 0 OR (need > 0 AND state != {_ACTIVE})"),
    ("WU {0}: {1} valid results but no canonical",
     f"SELECT w.id, count(*) FROM sci_wu w JOIN sci_result r ON r.wu_id = w.id WHERE w.canonical IS NULL"
     f" AND r.validate = {_VALID} GROUP BY w.id"),
    ("result {0}: credit {1} but validate state {2}",
     f"SELECT id, credit, validate FROM sci_result WHERE credit != 0 AND validate != {_VALID}"),
    ("batch {0}: counters done/error/assimilated {1}/{2}/{3} but rows say {4}/{5}/{6}",
     f"SELECT b.id, b.n_done, b.n_error, b.n_assimilated, count(w.state = {_DONE} OR NULL),"
     f" count(w.state > {_DONE} OR NULL), count(w.assim_seq) FROM sci_batch b"
     f" LEFT JOIN sci_wu w ON w.batch_id = b.id GROUP BY b.id"
     f" HAVING b.n_done != count(w.state = {_DONE} OR NULL) OR b.n_error != count(w.state > {_DONE} OR NULL)"
     f" OR b.n_assimilated != count(w.assim_seq)"),
    ("batch {0}: counts {1} unsent copies but its units need {2}",
     "SELECT b.id, b.n_res_unsent, coalesce(sum(w.need), 0) FROM sci_batch b LEFT JOIN sci_wu w"
     " ON w.batch_id = b.id GROUP BY b.id HAVING b.n_res_unsent != coalesce(sum(w.need), 0)"),
    ("batch {0}: assim_seq values are not 0..n-1",
     "SELECT batch_id FROM sci_wu WHERE assim_seq IS NOT NULL GROUP BY batch_id"
     " HAVING count(DISTINCT assim_seq) != count(*) OR min(assim_seq) != 0 OR max(assim_seq) != count(*) - 1"),
    ("host {0} app {1}: credit {2} but its valid results sum to {3}",
     f"SELECT ha.host_id, ha.app, ha.credit, coalesce(s.c, 0) FROM sci_host_app ha LEFT JOIN"
     f" (SELECT r.host_id, b.app, sum(r.credit) AS c FROM sci_result r JOIN sci_batch b ON b.id = r.batch_id"
     f"  GROUP BY r.host_id, b.app) s ON s.host_id = ha.host_id AND s.app = ha.app"
     f" WHERE abs(ha.credit - coalesce(s.c, 0)) > {_EPS} * (1 + abs(ha.credit))"),
    ("host {0} app {1}: valid/invalid counters {2}/{3} but rows say {4}/{5}",
     f"SELECT ha.host_id, ha.app, ha.n_valid, ha.n_invalid, coalesce(s.v, 0), coalesce(s.i, 0)"
     f" FROM sci_host_app ha LEFT JOIN"
     f" (SELECT r.host_id, b.app, count(r.validate = {_VALID} OR NULL) AS v,"
     f"  count(r.validate = {int(ValidateState.INVALID)} OR NULL) AS i"
     f"  FROM sci_result r JOIN sci_batch b ON b.id = r.batch_id GROUP BY r.host_id, b.app) s"
     f" ON s.host_id = ha.host_id AND s.app = ha.app WHERE ha.n_valid != coalesce(s.v, 0)"
     f" OR ha.n_invalid != coalesce(s.i, 0)"),
    ("batch {0} host {1}: counters differ from result rows: {2}",
     f"SELECT bh.batch_id, bh.host_id, json_array(bh.n_sent, bh.n_success, bh.n_error, bh.n_noreply,"
     f" bh.n_aborted, bh.n_valid, bh.n_invalid, bh.credit, s.n, s.ok, s.err, s.nr, s.ab, s.v, s.i, s.c)"
     f" FROM sci_batch_host bh LEFT JOIN (SELECT batch_id, host_id, count(*) AS n,"
     f"  count(outcome = {_OK} OR NULL) AS ok, count(outcome = {int(Outcome.CLIENT_ERROR)} OR NULL) AS err,"
     f"  count(outcome = {int(Outcome.NO_REPLY)} OR NULL) AS nr, count(outcome = {int(Outcome.ABORTED)} OR NULL)"
     f"  AS ab, count(validate = {_VALID} OR NULL) AS v, count(validate = {int(ValidateState.INVALID)} OR NULL)"
     f"  AS i, sum(credit) AS c FROM sci_result GROUP BY batch_id, host_id) s"
     f" ON s.batch_id = bh.batch_id AND s.host_id = bh.host_id"
     f" WHERE bh.n_sent != coalesce(s.n, 0) OR bh.n_success != coalesce(s.ok, 0)"
     f" OR bh.n_error != coalesce(s.err, 0) OR bh.n_noreply != coalesce(s.nr, 0)"
     f" OR bh.n_aborted != coalesce(s.ab, 0) OR bh.n_valid != coalesce(s.v, 0)"
     f" OR bh.n_invalid != coalesce(s.i, 0) OR abs(bh.credit - coalesce(s.c, 0)) > {_EPS} * (1 + bh.credit)"),
]


def violations(conn: sqlite3.Connection, outputs: dict[int, Path]) -> list[str]:
    """Run every invariant query, plus the output files' exactly-once check."""
    found: list[str] = []
    for text, query in _CHECKS:
        for row in conn.execute(query):
            found.append(text.format(*row))
    for bid, path in outputs.items():
        n = conn.execute("SELECT n_assimilated FROM sci_batch WHERE id=?", (bid,)).fetchone()[0]
        seen: set[int] = set()
        lines = 0
        if path.exists():
            with open(path, encoding="ascii") as fh:
                for line in fh:
                    lines += 1
                    wu = json.loads(line)["wu"]
                    if wu in seen:
                        found.append(f"batch {bid}: WU {wu} appears twice in {path.name}")
                    seen.add(wu)
        if lines != n:
            found.append(f"batch {bid}: {path.name} has {lines} results, the database {n}")
    return found
