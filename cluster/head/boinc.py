"""The PCs' own BOINC clients as the head sees them: the fleet table behind
`salvage boinc status`, and the attach requests of `salvage boinc attach`
(what the agents report is checked in boincreport).

An attach request lives in memory only, keyed by an id, until the agent
reports its outcome: the project's account key is never written to the head's
disk. A head restarted meanwhile forgets the request; the CLI says so.
"""
from __future__ import annotations

import re
import secrets
import threading
import time
from typing import Callable

from .http import ApiError, Route

URL_RE = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/+-]*)?")
KEY_RE = re.compile(r"[A-Za-z0-9_]{8,256}")  # BOINC's account keys: hex, or "userid_hex" (weak keys)
REQUEST_TTL_S = 600.0  # an agent that has not picked a request up by then is not coming back for it


class BoincFleet:
    """`alive` lists the hosts alive now with their stored BOINC reports (name -> report or None)."""

    def __init__(self, alive: Callable[[], dict[str, dict | None]], log: Callable[[str], None],
                 clock: Callable[[], float] = time.time):
        self.alive = alive
        self.log = log
        self.clock = clock
        self.pending: dict[str, dict[str, dict]] = {}  # host -> request id -> {url, key, at}
        self._lock = threading.Lock()  # heartbeats and the CLI come in on the server's threads

    def routes(self) -> dict:
        return {
            ("POST", "/api/boinc/attach"): Route(self.api_attach),
            ("GET", "/api/boinc/status"): Route(self.api_status),
        }

    # --- what the heartbeats carry ---
    def beat(self, host: str, report: dict | None) -> None:
        """A host reported: requests it has an outcome for are done."""
        done = {rid for rid, o in (report or {}).get("attaches", {}).items() if o["state"] != "attaching"}
        now = self.clock()
        with self._lock:
            waiting = self.pending.get(host, {})
            for rid in list(waiting):
                if rid in done or now - waiting[rid]["at"] > REQUEST_TTL_S:
                    del waiting[rid]

    def directive(self, host: str) -> list[dict]:
        """The attach requests an agent has yet to take (it ignores those it already has)."""
        with self._lock:
            return [{"id": rid, "url": r["url"], "key": r["key"]} for rid, r in self.pending.get(host, {}).items()]

    # --- API ---
    def api_attach(self, body: dict) -> dict:
        url, key, hosts = body.get("url"), body.get("key"), body.get("hosts")
        if not isinstance(url, str) or not URL_RE.fullmatch(url):
            raise ApiError(400, "url: expected a project's http(s):// URL, as the project's web site gives it")
        if not isinstance(key, str) or not KEY_RE.fullmatch(key):
            raise ApiError(400, "account key: expected the key from the project's account page "
                                "(letters, digits and '_', 8 to 256 of them)")
        if hosts is not None and (not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts)):
            raise ApiError(400, "hosts: expected a list of host names")
        alive = self.alive()
        chosen = sorted(alive) if hosts is None else list(dict.fromkeys(hosts))
        sent, skipped = [], {}
        rid = secrets.token_hex(8)
        for host in chosen:
            if host not in alive:
                skipped[host] = "not alive in the cluster"
            elif alive[host] is None:
                skipped[host] = "its agent does not manage BOINC (join with --boinc)"
            else:
                with self._lock:
                    self.pending.setdefault(host, {})[rid] = {"url": url, "key": key, "at": self.clock()}
                sent.append(host)
        if not sent:
            raise ApiError(409, "hosts: no PC to attach: " + ("; ".join(f"{h}: {w}" for h, w in skipped.items())
                                                              or "no PC is alive"))
        self.log(f"BOINC attach {url} asked of {', '.join(sent)}")
        return {"id": rid, "sent": sent, "skipped": skipped}

    def api_status(self, _query: dict) -> dict:
        rows = []
        for host, report in sorted(self.alive().items()):
            with self._lock:
                waiting = sorted(self.pending.get(host, {}))
            rows.append({"host": host, "boinc": report, "waiting": waiting})
        return {"hosts": rows}

