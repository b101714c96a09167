"""Every way a volunteer PC (or anyone on the network) is known to lie or lean on
the head, run against the head's real code, and what each attack changed.

    python benchmarks/adversary.py

Science attacks run against the real ScienceStore (a SQLite file in a temp dir)
and the real apps; each also runs with the check that stops it turned off (the
baseline: what the check buys). Host and HTTP attacks run against the real
HTTP server with the real hosts, science and training routes over one real
database (Ray's node list is a stand-in). Pool deltas go through the head's
real round checks (cluster.train.deltas), token-weighted average and outer
step, broken by the same code a test PC uses (`worker join --corrupt-deltas`);
no live pool (a live one takes minutes per fault kind). Read timeouts are cut
from 15 s to 1 s and the database's busy wait to 1-3 s so the run takes about
a minute; nothing else is changed.

Last line, JSON: attacks, held (attacks that changed nothing they should not),
units_lost, wrong_canonical, credit_to_liars, and the same three with the
checks off. Goal: held = attacks, the other three 0.
"""
from __future__ import annotations

import copy
import io
import json
import math
import random
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry  # noqa: E402

from cluster.head import http as head_http  # noqa: E402
from cluster.head.db import Database  # noqa: E402
from cluster.head.hosts import HostRecords, HostsApi  # noqa: E402
from cluster.head.http import Handler, Route, serve  # noqa: E402
from cluster.head.metrics import PoolMetrics  # noqa: E402
from cluster.science import store as store_module  # noqa: E402
from cluster.science.api import ScienceApi  # noqa: E402
from cluster.science.states import HostCaps  # noqa: E402
from cluster.science.store import TRUST_THRESHOLD, ScienceStore  # noqa: E402
from cluster.train.deltas import Expected, norm_outliers, take  # noqa: E402
from cluster.train.records import JobRecords  # noqa: E402
from cluster.train.service import TrainJobs  # noqa: E402
from jobs.gpt.codecs import Packed, decode, encode  # noqa: E402
from jobs.gpt.outer import OuterOptimizer, average_deltas  # noqa: E402
from jobs.science.apps import get_app  # noqa: E402
from jobs.science.apps.hp_fold import energy_of  # noqa: E402
from jobs.science.tasks import Report  # noqa: E402
from workers.headclient import HeadClient, HeadError, HeadUnreachable  # noqa: E402
from workers.raynode import free_ports  # noqa: E402
from workers.records import GpuInfo, HostInfo  # noqa: E402
from workers.tasks.faults import DELTA_FAULTS  # noqa: E402
from workers.tasks.pool_worker import corrupted  # noqa: E402

HOST = "127.0.0.2"
TOKEN = "k" * 64
READ_TIMEOUT_S = 1.0


@dataclass
class Outcome:
    """What one attack changed. `held`: nothing it should not; `baseline`: the same
    counters with the check that stops it turned off (None: no such switch)."""

    name: str
    held: bool
    units_lost: int = 0
    wrong_canonical: int = 0
    credit_to_liars: int = 0  # lying results that were credited
    note: str = ""
    baseline: dict | None = None


# ---------------------------------------------------------------- science: the store


class Unchecked:
    """An app with its result checks off: any JSON object passes, verify() passes,
    and compare() is the naive one given (or the app's own)."""

    def __init__(self, app: Any, compare: Callable[[Any, Any], bool] | None = None):
        self._app = app
        self.compare = compare or app.compare

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    def check_result(self, result: object) -> None:
        if not isinstance(result, dict):
            raise ValueError("result: expected an object")

    def verify(self, params: dict, result: dict) -> bool:
        return True


@contextmanager
def science(apps: dict[str, Any] | None = None, rng: random.Random | None = None) -> Iterator[ScienceStore]:
    with tempfile.TemporaryDirectory() as tmp:
        lookup = (lambda name: apps.get(name) or get_app(name)) if apps else get_app
        store = ScienceStore(Path(tmp) / "salvage.db", Path(tmp) / "out", apps=lookup,
                             rng=rng or random.Random(1))
        try:
            yield store
        finally:
            store.close()


def run_host(store: ScienceStore, name: str, answer: Callable[[dict, int], Any], machine: str = "",
             n: int = 1000) -> int:
    """One work fetch of a host and its reports; `answer(params, wu)` is its result."""
    tasks = store.fetch_work(HostCaps(name, machine=machine), n)
    store.report(name, [Report(t.result_id, "success", answer(t.params, t.wu_id)) for t in tasks])
    return len(tasks)


def work_until_done(store: ScienceStore, hosts: list[str], answer: Callable[[dict, int], Any]) -> None:
    for _ in range(20):
        if not sum(run_host(store, h, answer) for h in hosts):
            return


def tally(store: ScienceStore, batch: int, honest: Callable[[dict, Any], bool]) -> dict:
    """units_lost: units not done; wrong_canonical: canonical results that are not
    the honest answer; credit_to_liars: results that are not and were credited."""
    status = store.batch_status(batch)
    out = io.StringIO()
    store.export(batch, "jsonl", out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    wrong = sum(not honest(line["params"], line["result"]) for line in lines)
    credited = store.conn.execute(
        "SELECT r.payload, w.params FROM sci_result r JOIN sci_wu w ON w.id = r.wu_id"
        " WHERE r.batch_id = ? AND r.credit > 0", (batch,)).fetchall()
    lies = sum(not honest(json.loads(params), json.loads(payload)) for payload, params in credited)
    return {"units_lost": status["wus"]["total"] - status["wus"]["done"], "wrong_canonical": wrong,
            "credit_to_liars": lies}


def clean(counts: dict) -> bool:
    return counts["units_lost"] == 0 and counts["wrong_canonical"] == 0 and counts["credit_to_liars"] == 0


LJ_PARAMS = {"temperature": 0.85, "density": 0.05, "n_particles": 64, "steps": 200, "equilibration_steps": 50,
             "replicas": 2, "seed": 1}


def naive_lj_compare(a: dict, b: dict) -> bool:
    """Within 6 combined error bars, as each host claims them."""
    for value, err in (("energy_per_particle", "energy_stderr"), ("pressure", "pressure_stderr")):
        if not abs(a[value] - b[value]) <= 6.0 * math.hypot(a[err], b[err]):
            return False
    return True


def lj_md_stderr_claims(honest_result: dict) -> list[Outcome]:
    """A liar reports an energy 50 error bars off, with an error bar of 1e300, 0 or
    -1 (so that it 'agrees' with anything, or with nothing). lj-md's verify
    recomputes the statistics from the blocks; its compare takes the smaller bar."""
    outcomes = []
    for claim in (1e300, 0.0, -1.0):
        lie = {**honest_result, "energy_per_particle": honest_result["energy_per_particle"]
               + 50 * honest_result["energy_stderr"], "energy_stderr": claim, "pressure_stderr": claim}
        counts, stats = _lj_run(None, lie, honest_result)
        base, _ = _lj_run({"lj-md": Unchecked(get_app("lj-md"), naive_lj_compare)}, lie, honest_result)
        held = clean(counts) and stats["liar"]["invalid"] == 1 and stats["liar"]["valid"] == 0
        outcomes.append(Outcome(f"lj-md liar claims stderr {claim:g}", held, **counts,
                                note=f"liar: {stats['liar']['invalid']} invalid", baseline=base))
    return outcomes


def _lj_run(apps: dict | None, lie: dict, honest_result: dict) -> tuple[dict, dict]:
    with science(apps) as store:
        batch = store.submit("lj-md", [LJ_PARAMS])
        run_host(store, "liar", lambda p, w: lie)  # first: its copy is the oldest
        work_until_done(store, ["h1", "h2"], lambda p, w: honest_result)
        stats = {h["host"]: h for h in store.host_stats()}
        return tally(store, batch, lambda p, r: r == honest_result), stats


def noop_honest(params: dict, result: Any) -> bool:
    return result == {"y": params["x"]}


def trusted_host_turns_liar() -> Outcome:
    """A host trusted on noop (single copies) answers 40 units honestly, then lies on
    40. Spot checks (at least 10% replicated) catch it; its trust goes and its
    recent single copies are opened again and checked by others."""

    def run(checks: bool) -> tuple[dict, dict]:
        saved = store_module.SPOT_CHECK_SHARE
        if not checks:
            store_module.SPOT_CHECK_SHARE = 0.0
        try:
            with science(rng=random.Random(5)) as store:
                if not checks:
                    store._recheck = lambda *args: None  # a caught liar's single copies stay as they are
                warm = store.submit("noop", [{"x": i} for i in range(12)])
                for h in ("t", "b"):
                    run_host(store, h, lambda p, w: {"y": p["x"]})
                assert store.batch_status(warm)["done"]
                batch = store.submit("noop", [{"x": i} for i in range(80)])
                run_host(store, "t", lambda p, w: {"y": p["x"] if p["x"] < 40 else p["x"] + 1})
                work_until_done(store, ["b", "c"], lambda p, w: {"y": p["x"]})
                stats = {h["host"]: h for h in store.host_stats()}
                return tally(store, batch, noop_honest), stats["t"]
        finally:
            store_module.SPOT_CHECK_SHARE = saved

    counts, liar = run(True)
    base, _ = run(False)
    held = clean(counts) and liar["consecutive_valid"] < TRUST_THRESHOLD and liar["invalid"] > 0
    return Outcome("a trusted host turns liar", held, **counts,
                   note=f"its trust: cv {liar['consecutive_valid']}, {liar['invalid']} invalid", baseline=base)


def two_names_one_machine() -> Outcome:
    """Two agents on one PC, under two names, send the same lie: together they
    would be a quorum of two. A unit never has two copies from one machine."""

    def run(bound: bool) -> dict:
        with science() as store:
            batch = store.submit("noop", [{"x": i} for i in range(20)])
            for name in ("alias-1", "alias-2", "alias-1", "alias-2"):  # the same lie from both names
                run_host(store, name, lambda p, w: {"y": p["x"] + 1}, machine="pc-x" if bound else name)
            work_until_done(store, ["h1", "h2"], lambda p, w: {"y": p["x"]})
            same = store.conn.execute(
                "SELECT count(*) FROM (SELECT r.wu_id FROM sci_result r JOIN sci_host h ON h.id = r.host_id"
                " WHERE h.name LIKE 'alias-%' GROUP BY r.wu_id HAVING count(*) > 1)").fetchone()[0]
            return {**tally(store, batch, noop_honest), "units_with_both_names": same}

    counts = run(True)
    base = run(False)
    both = counts.pop("units_with_both_names")
    return Outcome("two names on one machine", clean(counts) and both == 0, **counts,
                   note=f"units holding copies of both names: {both}", baseline=base)


def lazy_hp_fold(honest: dict[int, dict], params: list[dict]) -> Outcome:
    """A lazy host skips the search and sends a straight chain: a valid fold, so
    verify() passes; only a second copy (identical for honest hosts) shows it."""
    n = len(params[0]["sequence"])
    chain = [[i, 0] for i in range(n)]
    lazy = {"energy": energy_of(params[0]["sequence"], [tuple(p) for p in chain]), "conformation": chain}

    def run(quorum: int | None) -> dict:
        with science() as store:
            policy = {} if quorum is None else {"min_quorum": quorum, "target_nresults": quorum}
            batch = store.submit("hp-fold", params, **policy)
            run_host(store, "lazy", lambda p, w: lazy)
            work_until_done(store, ["h1", "h2"], lambda p, w: honest[p["seed"]])
            return tally(store, batch, lambda p, r: r == honest[p["seed"]])

    counts = run(None)
    base = run(1)  # checks off: a fold that verifies is taken on its own
    return Outcome("hp-fold straight chain", clean(counts), **counts, baseline=base)


# ---------------------------------------------------------------- the head's HTTP server


class Nodes:
    """Ray's node list, as the hosts API reads it (no Ray here)."""

    def __init__(self):
        self.nodes: list[dict] = []

    def add(self, node_id: str, host: str, agent: str) -> None:
        self.nodes.append({"NodeID": node_id, "Alive": True, "NodeManagerAddress": HOST,
                           "Labels": {"salvage.io/host": host, "salvage.io/agent": agent}})

    def refresh(self) -> None:
        pass

    def find(self, host: str, agent: str) -> dict | None:
        return next((n for n in self.nodes if n["Labels"]["salvage.io/host"] == host
                     and n["Labels"]["salvage.io/agent"] == agent), None)

    def alive(self, node_id: str | None) -> dict | None:
        return next((n for n in self.nodes if n["NodeID"] == node_id), None)


@dataclass
class Head:
    port: int
    db: Database
    store: ScienceStore
    nodes: Nodes
    routes: dict
    server: Any
    threads_at_start: int = 0
    lines: list[str] = field(default_factory=list)

    def client(self, timeout: float = 10.0, token: str = TOKEN) -> HeadClient:
        return HeadClient(HOST, self.port, token, timeout=timeout)

    def counts(self) -> dict:
        conn = sqlite3.connect(self.db.path)
        try:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("hosts", "sci_batch", "sci_wu", "train_jobs", "submissions", "events")}
        finally:
            conn.close()


@contextmanager
def head(server_class: Callable | None = None) -> Iterator[Head]:
    """The head's hosts, science and training routes over one database, served by
    the real HTTP server (or by `server_class`, for a baseline)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = Database(root / "salvage.db")
        store = ScienceStore(root / "salvage.db", root / "science")
        nodes = Nodes()
        hosts = HostRecords(db)
        lines: list[str] = []
        hosts_api = HostsApi(hosts, nodes, epoch=1.0, running=dict, busy=dict, on_lost=lambda name: None,
                             log=lines.append, about={}, loopback=True)
        train = TrainJobs(JobRecords(db), hosts, nodes, root / "jobs", head={}, pool_metrics=PoolMetrics(
            CollectorRegistry()), log=lines.append, stopping=threading.Event())
        routes = {("GET", "/api/health"): Route(lambda _b: {"ok": True}, open=True),
                  **hosts_api.routes(), **train.routes(), **ScienceApi(store, lines.append).routes()}
        (port,) = free_ports(1, HOST)
        if server_class is None:
            server = serve(routes, HOST, port, TOKEN, log=lines.append)
        else:
            handler = type("BoundHandler", (Handler,), {"routes": routes, "token": TOKEN,
                                                         "log": staticmethod(lines.append), "login_form": None})
            server = server_class((HOST, port), handler)
        before = threading.active_count()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield Head(port, db, store, nodes, routes, server, before, lines)
        finally:
            server.shutdown()
            server.server_close()
            store.close()
            db.close()


def raw(port: int, data: bytes, timeout: float = 5.0) -> int:
    """Send bytes, read the answer; its status (0: none)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except OSError:
            pass
    try:
        return int(reply.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def bad_tokens() -> Outcome:
    """No, wrong, truncated, non-ASCII and malformed tokens on every route of the
    head (and an unknown path): each a 401, and nothing stored."""
    auths = [None, b"Bearer wrong", b"Bearer " + TOKEN[:-1].encode(), "Bearer ünïcödé".encode("latin-1"),
             "Bearer €".encode(), b"Basic " + TOKEN.encode(), b"Bearer ", b"bearer" + TOKEN.encode(), b"\xff\xfe"]
    with head() as h:
        before = h.counts()
        closed = [key for key, route in h.routes.items() if not route.open] + [("GET", "/no/such/path")]
        bad = []
        for method, path in closed:
            for auth in auths:
                header = b"" if auth is None else b"Authorization: " + auth + b"\r\n"
                status = raw(h.port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + header +
                             b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                if status != 401:
                    bad.append((method, path, auth, status))
        # Baseline: the same requests with the right token reach the handlers.
        opened = sum(raw(h.port, f"{m} {p} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                                 f"Content-Length: 2\r\n\r\n{{}}".encode()) not in (0, 401) for m, p in closed)
        stored = h.counts() != before
    return Outcome("no, wrong or non-ASCII tokens", not bad and not stored,
                   note=f"{len(closed) * len(auths)} requests on {len(closed)} routes, {len(bad)} not 401; "
                        f"with the token {opened} of them reach their handler",
                   baseline={"routes_answering_without_checks": opened})


class Unbounded(ThreadingHTTPServer):
    """The stdlib's threading server: a thread for every connection, with no cap."""

    daemon_threads = True
    request_queue_size = head_http.BoundedServer.request_queue_size


def connection_floods(bounded: bool = True) -> dict:
    """Bad Content-Lengths, headers cut off half-way and hundreds of idle sockets."""
    saved = Handler.timeout, head_http.READ_TIMEOUT_S
    Handler.timeout = head_http.READ_TIMEOUT_S = READ_TIMEOUT_S
    try:
        with head(None if bounded else Unbounded) as h:
            before = h.counts()
            auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
            submit = b"POST /api/science/submit HTTP/1.1\r\n" + auth
            answers = {length: raw(h.port, submit + b"Content-Length: " + length + b"\r\n\r\n" + body)
                       for length, body in ((b"-5", b"{}"), (b"abc", b"{}"), (b"99999999999", b"{}"),
                                            (b"100", b'{"app": "noop", "params": [{"x": 1}]}'),
                                            (b"1, 2", b"{}"))}
            idle = []
            for i in range(300):
                s = socket.create_connection((HOST, h.port), timeout=5)
                if i % 2:
                    s.sendall(submit + b"Content-Le")
                idle.append(s)
            peak = 0
            start = time.monotonic()
            while time.monotonic() - start < 2 * READ_TIMEOUT_S:  # the idle sockets hold their threads
                peak = max(peak, threading.active_count() - h.threads_at_start)
                time.sleep(0.02)
            answered_at = None
            while time.monotonic() - start < 15:
                try:
                    if h.client(timeout=2).get("/api/health") == {"ok": True}:
                        answered_at = time.monotonic() - start
                        break
                except (HeadError, HeadUnreachable):
                    time.sleep(0.1)
            for s in idle:
                s.close()
            stored = h.counts() != before
    finally:
        Handler.timeout, head_http.READ_TIMEOUT_S = saved
    return {"answers": {k.decode(): v for k, v in answers.items()}, "peak_threads": peak,
            "answered_after_s": None if answered_at is None else round(answered_at, 2), "stored": stored}


def floods() -> Outcome:
    got = connection_floods(True)
    base = connection_floods(False)
    held = (all(v in (400, 413) for v in got["answers"].values()) and got["peak_threads"] <= head_http.MAX_CONNECTIONS + 4
            and got["answered_after_s"] is not None and not got["stored"])
    return Outcome("bad lengths, half-sent headers, 300 idle sockets", held,
                   note=f"answers {got['answers']}; peak {got['peak_threads']} threads (cap "
                        f"{head_http.MAX_CONNECTIONS}); answered {got['answered_after_s']} s after the flood began",
                   baseline={"peak_threads": base["peak_threads"], "answers": base["answers"]})


AGENT_A, AGENT_B = "a" * 32, "b" * 32


def host_record(name: str = "pc1", **extra: Any) -> dict:
    info = HostInfo(name=name, cpu_model="cpu", cpu_cores=4, ram_bytes=2**34, disk_bytes=2**40,
                    gpus=[GpuInfo(index=0, uuid="GPU-1", name="RTX 3060", vram_bytes=12 * 2**30,
                                  compute_capability="8.6", driver="550", speed_gflops=9000.0)],
                    cpu_gflops=50.0, machine_id="0" * 32)
    return {**info.to_dict(), **extra}


def fuzzed_host_records(n: int = 300) -> Outcome:
    """Host records with fields swapped for junk (NaN, 1e308, huge strings, wrong
    types), registered over HTTP: each is a one-line 400, or a whole, typed record."""
    rng = random.Random(16)
    junk = [None, -1, 0, 1e308, float("nan"), float("inf"), "", "x" * 5000, [], {}, [1, 2], {"a": 1}, True,
            "7.5", 2**70, "bad name!", "../../etc", ["x"] * 500]
    with head() as h:
        h.nodes.add("node-1", "pc1", AGENT_A)
        client = h.client()
        statuses: dict[int, int] = {}
        multiline = leaked = 0
        rows_ok = True
        for _ in range(n):
            body = copy.deepcopy(host_record())
            for _ in range(rng.randint(1, 3)):
                gpus = body.get("gpus")
                gpu = gpus[0] if isinstance(gpus, list) and gpus and isinstance(gpus[0], dict) else None
                target = gpu if gpu is not None and rng.random() < 0.4 else body
                target[rng.choice(sorted(target))] = rng.choice(junk)
            try:  # NaN and inf travel as JSON's NaN and Infinity, which Python's parser takes
                client.post("/api/hosts/register", {"host": body, "agent_id": AGENT_A})
                status = 200
                row = h.db.conn.execute("SELECT info_json FROM hosts").fetchone()
                stored = HostInfo.from_dict(json.loads(row[0]))  # whole and typed, or this raises
                rows_ok &= math.isfinite(stored.speed_gflops) and len(row[0]) < 20_000
            except HeadError as err:
                status = err.status
                multiline += "\n" in str(err)
                leaked += h.db.conn.execute("SELECT count(*) FROM hosts").fetchone()[0]  # refused: nothing stored
            statuses[status] = statuses.get(status, 0) + 1
            h.db.conn.execute("DELETE FROM hosts")  # each record on its own
        refused = statuses.get(400, 0)
    held = set(statuses) <= {200, 400} and multiline == 0 and leaked == 0 and rows_ok
    return Outcome("fuzzed host records", held, note=f"{n} records: {statuses}",
                   baseline={"junk_records_stored_unchecked": refused})


def lost_name_taken() -> Outcome:
    """A PC is lost; a new agent on another PC registers under its name, with no
    secret or a guessed one: refused, and the record stays the lost PC's."""
    with head() as h:
        h.nodes.add("node-1", "pc1", AGENT_A)
        h.nodes.add("node-2", "pc1", AGENT_B)
        client = h.client()
        secret = client.post("/api/hosts/register", {"host": host_record(), "agent_id": AGENT_A})["secret"]
        h.db.conn.execute("UPDATE hosts SET state = 'lost'")
        refused = 0
        for guess in (None, "0" * 64, secret[:-1] + "x", "é" * 10, 7):
            try:
                client.post("/api/hosts/register", {"host": host_record(), "agent_id": AGENT_B, "secret": guess})
            except HeadError as err:
                refused += err.status in (400, 409)
        node = h.db.conn.execute("SELECT ray_node_id FROM hosts WHERE name = 'pc1'").fetchone()[0]
        back = "secret" not in client.post("/api/hosts/register",
                                           {"host": host_record(), "agent_id": AGENT_A, "secret": secret})
        # Baseline: a record with no secret bound (as before names were bound) is taken.
        h.db.conn.execute("UPDATE hosts SET state = 'lost', secret_hash = NULL")
        client.post("/api/hosts/register", {"host": host_record(), "agent_id": AGENT_B})
        taken = h.db.conn.execute("SELECT ray_node_id FROM hosts WHERE name = 'pc1'").fetchone()[0] == "node-2"
    return Outcome("a lost PC's name from a new agent", refused == 5 and node == "node-1" and back,
                   note=f"{refused}/5 refused; the PC itself comes back with its secret: {back}",
                   baseline={"name_taken_without_secret": taken})


BAD_TRAIN = [
    {},
    {"config": "x"},
    {"config": {"model": {}, "train": {"max_iters": -5}}},
    {"config": {"model": {"n_layer": 0}, "train": {}}},
    {"config": {"model": {"n_embd": 1e9}, "train": {}}},
    {"config": {"model": {}, "train": {"learning_rate": "NaN"}}},
    {"config": {"model": {}, "train": {"surprise": 1}}},
    {"config": {"model": {}, "train": {}}, "data": "\0etc/passwd"},
    {"config": {"model": {}, "train": {}}, "pool": {"workers": -3}},
    {"config": {"model": {}, "train": {}}, "pool": "all"},
    {"config": {"model": {}, "train": {}}, "idempotency_key": "../../x"},
]


def bad_train_configs() -> Outcome:
    with head() as h:
        before = h.counts()
        client = h.client()
        statuses = []
        for body in BAD_TRAIN:
            try:
                client.post("/api/train/submit", body)
                statuses.append(200)
            except HeadError as err:
                statuses.append(err.status if "\n" not in str(err) else -1)
        stored = h.counts() != before
    return Outcome("bad training configs", all(s == 400 for s in statuses) and not stored,
                   note=f"{len(BAD_TRAIN)} configs answered {sorted(set(statuses))}")


def submit_retrying(client: HeadClient, body: dict, patience_s: float) -> dict | str:
    """What `salvage science submit` does: one idempotency key, sent again while
    the head does not answer; the reply, or why it was not taken."""
    body = {**body, "idempotency_key": "adversary-" + str(random.getrandbits(64))}
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return client.post("/api/science/submit", body)
        except HeadError as err:
            return f"{err.status} {err}"
        except HeadUnreachable:
            if time.monotonic() > deadline:
                return "gave up"


def locked_database() -> Outcome:
    """Another process holds the database's write lock while a batch is submitted:
    the submission is taken once (the lock goes in time) or refused with nothing
    stored (it does not), never reported failed yet stored, or stored twice."""
    cases = []  # (lock held s, the head's busy wait s, the client's timeout s)
    for hold, busy, client_timeout in ((0.5, 2.0, 10.0), (3.0, 1.0, 10.0), (1.5, 3.0, 0.5)):
        with head() as h:
            h.store.conn.execute(f"PRAGMA busy_timeout = {int(busy * 1000)}")
            locker = sqlite3.connect(h.db.path, isolation_level=None, check_same_thread=False)
            locker.execute("BEGIN EXCLUSIVE")
            threading.Timer(hold, locker.execute, ("COMMIT",)).start()
            reply = submit_retrying(h.client(timeout=client_timeout),
                                    {"app": "noop", "params": [{"x": 1}, {"x": 2}]}, patience_s=10.0)
            time.sleep(max(busy, hold) + 0.5)  # anything still waiting at the head has ended
            batches = h.counts()["sci_batch"]
            locker.close()
        taken = isinstance(reply, dict)
        ok = batches == (1 if taken else 0) and (taken or "\n" not in reply)
        cases.append({"hold_s": hold, "busy_s": busy, "client_timeout_s": client_timeout,
                      "answer": "taken" if taken else f"refused ({reply[:40]})", "batches": batches, "ok": ok})
    return Outcome("locked database during submit", all(c["ok"] for c in cases),
                   note="; ".join(f"lock {c['hold_s']} s, wait {c['busy_s']} s, client {c['client_timeout_s']} s: "
                                  f"{c['answer']}, {c['batches']} batch(es)" for c in cases))


# ---------------------------------------------------------------- pool deltas

N_PARAMS = 20_000
TOKENS_PER_STEP = 256


def round_result(delta: np.ndarray, codec: str, steps: int = 5) -> tuple:
    p = encode(delta, codec)
    return (p.codec, p.data, p.scales, p.size, steps * TOKENS_PER_STEP, steps, 1.0, 0.1, 2.5, {"pos": 1})


def pool_round(results: dict[str, tuple], codec: str, checked: bool) -> tuple[np.ndarray | None, set[str]]:
    """One round at the head: each result taken (or refused), outliers refused, the
    rest averaged by tokens and stepped. Returns the new parameters (None: the
    round crashed) and who was dropped."""
    params = np.zeros(N_PARAMS, np.float32)
    outer = OuterOptimizer(N_PARAMS, 0.7, 0.9)
    try:
        if checked:
            taken, dropped = {}, set()
            for key, r in results.items():
                t = take(r, Expected(codec, N_PARAMS, TOKENS_PER_STEP, 10), 1.0)
                if isinstance(t, str):
                    dropped.add(key)
                else:
                    taken[key] = t
            for key in norm_outliers({k: t.norm_per_step for k, t in taken.items()}, None):
                dropped.add(key)
                del taken[key]
            deltas = [(t.delta, t.tokens) for t in taken.values()]
        else:  # as sent: decoded and weighted by the tokens claimed
            dropped = set()
            with np.errstate(all="ignore"):
                deltas = [(decode(Packed(r[0], r[1], r[2], r[3])), r[4]) for r in results.values()]
        with np.errstate(all="ignore"):
            return outer.step(params, average_deltas(deltas)), dropped
    except Exception:  # noqa: BLE001 - the round crashed: the job stops
        return None, set()


def _judge(results: dict[str, tuple], codec: str, want: np.ndarray, checked: bool) -> dict:
    got, dropped = pool_round(results, codec, checked)
    finite = got is not None and got.shape == want.shape and bool(np.isfinite(got).all())
    skewed = finite and not np.allclose(got, want, rtol=1e-5, atol=1e-9)
    return {"crashed": got is None, "finite": finite, "liar_dropped": "liar" in dropped,
            "honest_dropped": sorted(dropped - {"liar"}), "skewed": skewed}


def pool_deltas() -> list[Outcome]:
    """Three honest workers and one whose delta is short, NaN, of another codec,
    inf-scaled or claims 10^15 tokens. The liar is dropped, the parameters stay
    finite and move as the honest workers' average moves them."""
    rng = np.random.default_rng(16)
    outcomes = []
    for codec in ("int8", "fp16"):
        honest = {f"w{i}": round_result(rng.normal(0, 1e-3, N_PARAMS).astype(np.float32), codec) for i in range(3)}
        want, _ = pool_round(honest, codec, True)
        for kind in DELTA_FAULTS:
            liar = corrupted(kind, round_result(rng.normal(0, 1e-3, N_PARAMS).astype(np.float32), codec))
            if kind == "inf-scale" and codec == "fp16":
                continue  # no scales to break in fp16
            results = {**honest, "liar": liar}
            on, off = _judge(results, codec, want, True), _judge(results, codec, want, False)
            held = on["liar_dropped"] and on["finite"] and not on["skewed"] and not on["honest_dropped"]
            outcomes.append(Outcome(f"pool delta '{kind}' ({codec})", held,
                                    note="liar dropped, parameters finite, honest average kept" if held else str(on),
                                    baseline={k: off[k] for k in ("crashed", "finite", "skewed")}))
    return outcomes


# ---------------------------------------------------------------- main


def main() -> None:
    t0 = time.perf_counter()
    honest_lj = get_app("lj-md").run(LJ_PARAMS)
    hp = get_app("hp-fold")
    hp_params = [{"sequence": "HPHPPHHPHPPHPHHPPHPH", "sweeps": 50, "replicas": 2, "seed": s} for s in range(5)]
    honest_hp = {p["seed"]: hp.run(p) for p in hp_params}
    outcomes: list[Outcome] = [
        *lj_md_stderr_claims(honest_lj),
        trusted_host_turns_liar(),
        two_names_one_machine(),
        lazy_hp_fold(honest_hp, hp_params),
        fuzzed_host_records(),
        lost_name_taken(),
        *pool_deltas(),
        bad_tokens(),
        floods(),
        bad_train_configs(),
        locked_database(),
    ]
    for o in outcomes:
        counts = f"lost {o.units_lost}, wrong canonical {o.wrong_canonical}, credited lies {o.credit_to_liars}"
        print(f"{'held ' if o.held else 'BROKE'} {o.name}: {counts}; {o.note}")
        if o.baseline is not None:
            print(f"      checks off: {o.baseline}")
    science_base = [o.baseline for o in outcomes if o.baseline and "units_lost" in o.baseline]
    summary = {
        "attacks": len(outcomes),
        "held": sum(o.held for o in outcomes),
        "units_lost": sum(o.units_lost for o in outcomes),
        "wrong_canonical": sum(o.wrong_canonical for o in outcomes),
        "credit_to_liars": sum(o.credit_to_liars for o in outcomes),
        "checks_off": {
            "science_attacks": len(science_base),
            "units_lost": sum(b["units_lost"] for b in science_base),
            "wrong_canonical": sum(b["wrong_canonical"] for b in science_base),
            "credit_to_liars": sum(b["credit_to_liars"] for b in science_base),
            "pool_rounds_crashed_or_skewed": sum(bool(o.baseline.get("crashed") or o.baseline.get("skewed"))
                                                 for o in outcomes if o.name.startswith("pool delta")),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
