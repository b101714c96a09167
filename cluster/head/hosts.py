"""The PCs the head knows: their records (the `hosts` table) and the agents' API
(check a name, register, heartbeat, leave), plus what `cluster status` and
Prometheus' service discovery read from them."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from workers.records import HostInfo, RecordError

from .boinc import BoincFleet
from .boincreport import ReportError, boinc_report
from .db import Database
from .http import ApiError, Route
from .raynodes import HOST_LABEL, RayNodes

LOST_AFTER_S = 20.0  # an agent beats every 2 s; ten missed beats and it is lost
# A PC's agent that starts again (a crash, a quick reboot) takes its name back at once from
# the last one, once that one has missed two beats and nothing answers on its metrics port.
RESTART_SILENCE_S = 5.0
LAST_AGENT_PROBE_S = 1.0
AGENT_ID_RE = re.compile(r"[0-9a-f]{32}")
AGENT_STATES = ("starting", "idle", "busy", "paused", "leaving")
COLUMNS = ("name, agent_id, state, info_json, metrics_addr, ray_node_id, lost_gpus, joined_at, last_seen, "
           "secret_hash, machine, agent_state, live_json, paused_json, health_json, admin_json, boinc_json")
# The reasons a PC or GPU is paused, as agents send them: a small fixed set (they label metrics).
PAUSE_REASONS = ("owner_input", "owner_cpu", "time_window", "gpu_hot", "ram", "idle_unknown", "operator", "drained",
                 "unhealthy", "preempted")
FAILURES_TO_CHECK = 3  # task failures on one PC within FAILURE_WINDOW_S make it unhealthy until it checks out
FAILURE_WINDOW_S = 600.0
THROTTLE_REASONS = ("power_cap", "sw_thermal", "hw_thermal", "hw_slowdown")


@dataclass
class HostRow:
    name: str
    agent_id: str
    state: str
    info: HostInfo
    metrics_addr: str | None
    ray_node_id: str | None
    lost_gpus: list[int]
    joined_at: float
    last_seen: float
    secret_hash: str | None = None  # the credential the name is bound to; None only before its first join
    machine: str | None = None  # the PC it runs on, as quorums count it
    agent_state: str | None = None  # as its last heartbeat said
    live: list[dict] = field(default_factory=list)  # each GPU's readings at its last heartbeat
    paused: dict = field(default_factory=dict)  # the agent's: {"host": reason, "gpus": {"0": reason}, ...}
    health: dict = field(default_factory=dict)  # the agent's {"host": why, "gpus": {...}}, and the head's "failures"
    admin: dict = field(default_factory=dict)  # the operator's: {"host": {state, reason, at}, "gpus": {"0": ...}}
    boinc: dict | None = None  # its BOINC client as the agent last reported it; None: not managed

    def blocked(self, gpu: int | None = None, science: bool = False) -> str | None:
        """Why this PC (or one of its GPUs) takes no new work now, or None. A drained
        device takes none either; what runs there finishes."""
        host_admin = self.admin.get("host") or {}
        if host_admin.get("state") in ("paused", "drained"):
            return f"{host_admin['state']} by the operator: {host_admin.get('reason') or 'no reason given'}"
        if self.paused.get("host"):
            return f"paused ({self.paused['host']})"
        if self.health.get("host") or self.health.get("failures"):
            return f"unhealthy: {self.health.get('host') or self.health['failures']['why']}"
        if science and self.paused.get("science"):
            return f"science steps aside ({self.paused['science']})"
        if gpu is None:
            return None
        entry = (self.admin.get("gpus") or {}).get(str(gpu)) or {}
        if entry.get("state") in ("paused", "drained"):
            return f"GPU {gpu} {entry['state']} by the operator: {entry.get('reason') or 'no reason given'}"
        if gpu in self.lost_gpus:
            return f"GPU {gpu} lost"
        problem = next((g.problem for g in self.info.gpus if g.index == gpu), None)
        if problem:
            return f"GPU {gpu} unusable: {problem}"
        if (self.health.get("gpus") or {}).get(str(gpu)):
            return f"GPU {gpu} unhealthy: {self.health['gpus'][str(gpu)]}"
        if (self.paused.get("gpus") or {}).get(str(gpu)):
            return f"GPU {gpu} paused ({self.paused['gpus'][str(gpu)]})"
        return None

    def drained(self, gpu: int | None = None) -> bool:
        """The operator drained this PC or GPU: its work ends at its next boundary."""
        if (self.admin.get("host") or {}).get("state") == "drained":
            return True
        return gpu is not None and ((self.admin.get("gpus") or {}).get(str(gpu)) or {}).get("state") == "drained"

    def usable_gpus(self) -> list[int]:
        return [g.index for g in self.info.gpus if self.blocked(g.index) is None]


class HostRecords:
    """The hosts table. Every method is one statement under the database's lock."""

    def __init__(self, db: Database):
        self.db = db

    def get(self, name: str) -> HostRow | None:
        with self.db.lock:
            row = self.db.conn.execute(f"SELECT {COLUMNS} FROM hosts WHERE name = ?", (name,)).fetchone()
        return _host_row(row) if row else None

    def all(self) -> list[HostRow]:
        with self.db.lock:
            rows = self.db.conn.execute(f"SELECT {COLUMNS} FROM hosts ORDER BY name").fetchall()
        return [_host_row(r) for r in rows]

    def alive(self) -> list[HostRow]:
        return [r for r in self.all() if r.state == "alive"]

    def upsert(self, info: HostInfo, agent_id: str, metrics_addr: str | None, ray_node_id: str | None,
               secret_hash: str, machine: str) -> None:
        """Register a host. Its secret and machine are set at its first join and kept."""
        now = time.time()
        with self.db.lock:
            self.db.conn.execute(
                """INSERT INTO hosts (name, agent_id, state, info_json, speed_gflops, cpu_only,
                                      metrics_addr, ray_node_id, joined_at, last_seen, secret_hash, machine)
                   VALUES (?, ?, 'alive', ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET
                     agent_id=excluded.agent_id, state='alive', info_json=excluded.info_json,
                     speed_gflops=excluded.speed_gflops, cpu_only=excluded.cpu_only,
                     metrics_addr=excluded.metrics_addr, ray_node_id=excluded.ray_node_id,
                     lost_gpus='[]', joined_at=excluded.joined_at, last_seen=excluded.last_seen,
                     secret_hash=coalesce(hosts.secret_hash, excluded.secret_hash),
                     machine=coalesce(hosts.machine, excluded.machine)""",
                (info.name, agent_id, json.dumps(info.to_dict()), info.speed_gflops,
                 int(info.cpu_only), metrics_addr, ray_node_id, now, now, secret_hash, machine))

    def forget(self, name: str) -> bool:
        """Drop a host record, so that its name can be taken by another PC."""
        with self.db.lock:
            cur = self.db.conn.execute("DELETE FROM hosts WHERE name = ?", (name,))
        return cur.rowcount == 1

    def heartbeat(self, name: str, agent_id: str, lost_gpus: list[int], agent_state: str,
                  live: list[dict], paused: dict, health: dict, boinc: dict | None = None) -> bool:
        """Record a beat; False when no live registration of this agent exists. The
        head's own "failures" mark in the health is kept."""
        with self.db.lock:
            row = self.db.conn.execute("SELECT health_json FROM hosts WHERE name = ?", (name,)).fetchone()
            mine = json.loads(row[0]).get("failures") if row else None
            cur = self.db.conn.execute(
                "UPDATE hosts SET last_seen = ?, state = 'alive', lost_gpus = ?, agent_state = ?, live_json = ?, "
                "paused_json = ?, health_json = ?, boinc_json = ? WHERE name = ? AND agent_id = ? AND state != 'left'",
                (time.time(), json.dumps(lost_gpus), agent_state, json.dumps(live), json.dumps(paused),
                 json.dumps({**health, "failures": mine} if mine else health),
                 None if boinc is None else json.dumps(boinc), name, agent_id))
        return cur.rowcount == 1

    def set_json(self, name: str, column: str, value: dict) -> None:
        assert column in ("admin_json", "health_json")
        with self.db.lock:
            self.db.conn.execute(f"UPDATE hosts SET {column} = ? WHERE name = ?", (json.dumps(value), name))

    def event(self, host: str, kind: str, detail: str) -> None:
        with self.db.lock:
            self.db.conn.execute("INSERT INTO events (t, host, kind, detail) VALUES (?, ?, ?, ?)",
                                 (time.time(), host, kind, detail))

    def events(self, host: str | None = None, limit: int = 50) -> list[dict]:
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT t, host, kind, detail FROM events WHERE ? IS NULL OR host = ? ORDER BY id DESC LIMIT ?",
                (host, host, limit)).fetchall()
        return [{"t": t, "host": h, "kind": k, "detail": d} for t, h, k, d in rows]

    def set_state(self, name: str, state: str, agent_id: str | None = None) -> bool:
        with self.db.lock:
            if agent_id is None:
                cur = self.db.conn.execute("UPDATE hosts SET state = ? WHERE name = ?", (state, name))
            else:
                cur = self.db.conn.execute("UPDATE hosts SET state = ? WHERE name = ? AND agent_id = ?",
                                           (state, name, agent_id))
        return cur.rowcount == 1

    def mark_silent_lost(self, older_than: float) -> list[str]:
        """Alive hosts whose last beat is older than `older_than` become lost."""
        with self.db.lock:
            rows = self.db.conn.execute(
                "UPDATE hosts SET state = 'lost' WHERE state = 'alive' AND last_seen < ? RETURNING name",
                (older_than,)).fetchall()
        return [r[0] for r in rows]


def _host_row(row: tuple) -> HostRow:
    (name, agent_id, state, info_json, metrics_addr, ray_node_id, lost_gpus, joined_at, last_seen,
     secret_hash, machine, agent_state, live_json, paused_json, health_json, admin_json, boinc_json) = row
    return HostRow(name=name, agent_id=agent_id, state=state, info=HostInfo.from_dict(json.loads(info_json)),
                   metrics_addr=metrics_addr, ray_node_id=ray_node_id, lost_gpus=json.loads(lost_gpus),
                   joined_at=joined_at, last_seen=last_seen, secret_hash=secret_hash, machine=machine,
                   agent_state=agent_state, live=json.loads(live_json), paused=json.loads(paused_json),
                   health=json.loads(health_json), admin=json.loads(admin_json),
                   boinc=json.loads(boinc_json) if boinc_json else None)


def pause_report(value) -> dict:
    """The pauses of a heartbeat, checked: reasons from the fixed set, words bounded."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "paused: expected the agent's pauses")
    out: dict = {"host": None, "gpus": {}, "science": None, "detail": []}
    for key in ("host", "science"):
        if value.get(key) is not None:
            if value[key] not in PAUSE_REASONS:
                raise ApiError(400, f"paused.{key}: expected one of {', '.join(PAUSE_REASONS)}")
            out[key] = value[key]
    gpus = value.get("gpus") or {}
    if not isinstance(gpus, dict) or len(gpus) > 16:
        raise ApiError(400, "paused.gpus: expected GPU index -> reason")
    for index, reason in gpus.items():
        if not (isinstance(index, str) and index.isdigit() and int(index) < 16) or reason not in PAUSE_REASONS:
            raise ApiError(400, f"paused.gpus: expected GPU index -> one of {', '.join(PAUSE_REASONS)}")
        out["gpus"][index] = reason
    detail = value.get("detail") or []
    if not isinstance(detail, list) or not all(isinstance(d, str) for d in detail):
        raise ApiError(400, "paused.detail: expected lines of text")
    out["detail"] = [d[:300] for d in detail[:20]]
    return out


def health_report(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "health: expected the agent's health")
    host = value.get("host")
    gpus = value.get("gpus") or {}
    if (host is not None and not isinstance(host, str)) or not isinstance(gpus, dict) or len(gpus) > 16 or \
            not all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in gpus.items()):
        raise ApiError(400, "health: expected {host: why or null, gpus: {index: why}}")
    return {"host": host[:300] if host else None, "gpus": {k: v[:300] for k, v in gpus.items()}}


def live_readings(value) -> list[dict]:
    """The GPU readings of a heartbeat, checked: what is not a known, bounded
    reading is a 400 (the head shows these and acts on them)."""
    if not isinstance(value, list) or len(value) > 16:
        raise ApiError(400, "gpus: expected a list of at most 16 GPU readings")
    out = []
    for i, g in enumerate(value):
        if not isinstance(g, dict) or g.get("index") != i:
            raise ApiError(400, f"gpus[{i}]: expected the readings of GPU {i}")
        reading = {"index": i, "lost": g.get("lost") is True}
        for key, hi in (("temperature_c", 200.0), ("utilization", 1.0), ("memory_used_bytes", 2.0**42),
                        ("power_w", 5000.0), ("xid_errors", 1e9), ("ecc_errors", 1e12)):
            v = g.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
                raise ApiError(400, f"gpus[{i}].{key}: expected a number from 0 to {hi:g}")
            reading[key] = v
        throttle = g.get("throttle", [])
        if not isinstance(throttle, list) or not set(throttle) <= set(THROTTLE_REASONS):
            raise ApiError(400, f"gpus[{i}].throttle: expected reasons among {', '.join(THROTTLE_REASONS)}")
        reading["throttle"] = sorted(set(throttle))
        out.append(reading)
    return out


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def machine_key(info: HostInfo, loopback: bool) -> str:
    """The PC a host runs on, as quorums count it. Simulated PCs on a loopback head
    stand for separate PCs (the demo, the tests); anywhere else a simulated GPU
    list earns no second identity on the same machine."""
    machine = info.machine_id or f"name:{info.name}"
    return f"{machine}/{info.name}" if info.simulated and loopback else machine


def metrics_address(value, node_ip: str) -> str | None:
    """An agent's /metrics as `IP:PORT` on its own Ray node's address, or None;
    anything else would point Prometheus' service discovery elsewhere."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ApiError(400, "metrics_addr: expected HOST:PORT")
    host, _, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ApiError(400, f"metrics_addr: expected IP:PORT, got {value!r}") from None
    if host != node_ip:
        raise ApiError(400, f"metrics_addr: expected this PC's own address {node_ip}, got {host}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ApiError(400, f"metrics_addr: expected a port from 1 to 65535, got {port!r}")
    return value


def answers(addr: str | None) -> bool:
    """Whether anything listens at an agent's metrics address (IP:PORT, checked at its
    registration). Without one there is nothing to ask, so the agent counts as running."""
    if not addr:
        return True
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=LAST_AGENT_PROBE_S):
            return True
    except OSError:  # refused, or no answer: a PC that is off answers nothing
        return False


def field(body: dict, name: str, kind: type):
    """body[name] if it is a `kind`, else a one-line 400."""
    value = body.get(name)
    if not isinstance(value, kind):
        raise ApiError(400, f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def agent_id_of(body: dict) -> str:
    agent_id = field(body, "agent_id", str)
    if not AGENT_ID_RE.fullmatch(agent_id):
        raise ApiError(400, "agent_id: expected 32 hex digits")
    return agent_id


class HostsApi:
    """The agents' side of the API, and the fleet views built on the hosts table.

    A host is a credential, not a name: the head gives each name a secret at its
    first join, and later registrations under that name must show it. Work goes
    only to the Ray node a registration was bound to. `running` says what runs
    where (host -> descriptions) and `busy` how many tasks each host has;
    `on_lost` is told of every host that goes lost; `about` is added to the
    status (the head's addresses); `loopback` says the head serves one machine.
    """

    def __init__(self, hosts: HostRecords, nodes: RayNodes, epoch: float,
                 running: Callable[[], dict[str, list[str]]], busy: Callable[[], dict[str, int]],
                 on_lost: Callable[[str], None], log: Callable[[str], None], about: dict, loopback: bool,
                 training: Callable[[], dict[str, int]] = dict, boinc: BoincFleet | None = None):
        self.boinc = boinc  # the PCs' own BOINC clients: reports in, attach requests out
        self.training = training  # hosts training now: their science steps aside
        self.failures: dict[str, list[float]] = {}  # host -> times its tasks failed lately
        self.hosts = hosts
        self.nodes = nodes
        self.epoch = epoch  # tells agents this head (and its Ray cluster) is a new one
        self.running = running
        self.busy = busy
        self.on_lost = on_lost
        self.log = log
        self.about = about
        self.loopback = loopback

    def routes(self) -> dict:
        return {
            ("GET", "/api/status"): Route(self.api_status),
            ("POST", "/api/hosts/check"): Route(self.api_check),
            ("POST", "/api/hosts/register"): Route(self.api_register),
            ("POST", "/api/hosts/heartbeat"): Route(self.api_heartbeat),
            ("POST", "/api/hosts/leave"): Route(self.api_leave),
            ("POST", "/api/hosts/forget"): Route(self.api_forget),
            ("POST", "/api/hosts/admin"): Route(self.api_admin),
            ("POST", "/api/hosts/events"): Route(lambda body: {"events": self.hosts.events(body.get("host"))}),
        }

    def api_status(self, _body: dict) -> dict:
        running = self.running()
        nodes = []
        for row in self.hosts.all():
            info = row.info
            live = {g["index"]: g for g in row.live} if row.state == "alive" else {}
            ray_node = self.nodes.alive(row.ray_node_id) if row.state == "alive" else None
            nodes.append({
                "name": row.name, "state": row.state, "cpu_only": info.cpu_only,
                "speed_gflops": round(info.speed_gflops, 1),
                "cpu": {"model": info.cpu_model, "cores": info.cpu_cores, "ram_bytes": info.ram_bytes},
                "gpus": [{**live.get(g.index, {}), "index": g.index, "name": g.name, "vram_bytes": g.vram_bytes,
                          "compute_capability": g.compute_capability, "uuid": g.uuid,
                          "speed_gflops": g.speed_gflops, "lost": g.index in row.lost_gpus}
                         for g in info.gpus],
                "agent_state": row.agent_state,
                "running": running.get(row.name, []),
                "paused": row.paused, "health": row.health, "admin": row.admin,
                "boinc": row.boinc if row.state == "alive" else None,
                "blocked": row.blocked() if row.state == "alive" else None,
                "last_event": next(iter(self.hosts.events(row.name, 1)), None),
                "ray_labels": {k: v for k, v in (ray_node or {}).get("Labels", {}).items()
                               if k.startswith("salvage.io/")},
                "metrics": row.metrics_addr, "last_seen": row.last_seen,
                "simulated": info.simulated, "notes": info.notes,
            })
        return {"nodes": nodes, **self.about}

    def _claim(self, name: str, agent_id: str, secret) -> HostRow | None:
        """The host's row if `agent_id` may register as `name`, else a 409."""
        if secret is not None and (not isinstance(secret, str) or len(secret) > 200):
            raise ApiError(400, "secret: expected the text of this PC's secret file")
        row = self.hosts.get(name)
        if row is None:
            return None
        if row.secret_hash and not (secret and hmac.compare_digest(secret_hash(secret), row.secret_hash)):
            raise ApiError(409, f"name: {name!r} belongs to another PC (this one does not hold its secret); "
                                "join with another --name, or `salvage worker forget` it on the head")
        if row.state == "alive" and row.agent_id != agent_id:
            if not row.secret_hash:
                raise ApiError(409, f"name: an agent named {name!r} is already in the cluster; "
                                    "stop it first or join with another --name")
            # This PC itself (it showed the secret): its last agent is gone, or it runs twice.
            silent = time.time() - row.last_seen
            if silent < RESTART_SILENCE_S or answers(row.metrics_addr):
                raise ApiError(423, f"name: an agent of this PC named {name!r} still runs (its last heartbeat "
                                    f"{silent:.0f} s ago); stop it first or join with another --name")
            self._take_over(row)
            row = self.hosts.get(name)
        return row

    def _take_over(self, row: HostRow) -> None:
        """The last agent of a PC whose new agent is registering is gone: its host is
        lost now, not after LOST_AFTER_S, and so is its Ray node, so work leaves both at once."""
        if self.hosts.set_state(row.name, "lost", agent_id=row.agent_id):
            self.nodes.mark_dead(row.ray_node_id)
            self._event(row.name, "restarted", "its agent started again; the last one is gone")
            self.on_lost(row.name)

    def api_check(self, body: dict) -> dict:
        self._claim(field(body, "name", str), agent_id_of(body), body.get("secret"))
        return {"ok": True}

    def api_register(self, body: dict) -> dict:
        try:
            info = HostInfo.from_dict(body.get("host"))
        except RecordError as err:
            raise ApiError(400, str(err)) from None
        agent_id = agent_id_of(body)
        row = self._claim(info.name, agent_id, body.get("secret"))
        node = self.nodes.find(info.name, agent_id)
        if node is None:
            self.nodes.refresh()
            node = self.nodes.find(info.name, agent_id)
        if node is None:
            raise ApiError(425, f"ray: no live Ray node of agent {agent_id} labelled {HOST_LABEL}={info.name} yet")
        metrics = metrics_address(body.get("metrics_addr"), node["NodeManagerAddress"])
        fresh = None if row is not None and row.secret_hash else secrets.token_hex(32)
        self.hosts.upsert(info, agent_id, metrics, node["NodeID"],
                          secret_hash(fresh) if fresh else row.secret_hash, machine_key(info, self.loopback))
        self.log(f"host {info.name} joined ({len(info.gpus)} GPU(s), {info.speed_gflops:.0f} GFLOP/s)")
        return {"ok": True, "secret": fresh} if fresh else {"ok": True}

    def api_heartbeat(self, body: dict) -> dict:
        name = field(body, "name", str)
        lost = body.get("lost_gpus", [])
        if not isinstance(lost, list) or len(lost) > 64 or \
                not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 64 for i in lost):
            raise ApiError(400, "lost_gpus: expected a list of GPU indexes")
        state = body.get("state", "idle")
        if state not in AGENT_STATES:
            raise ApiError(400, f"state: expected one of {', '.join(AGENT_STATES)}")
        live = live_readings(body.get("gpus", []))
        paused, health = pause_report(body.get("paused")), health_report(body.get("health"))
        try:
            boinc = boinc_report(body.get("boinc"))
        except ReportError as err:
            raise ApiError(400, str(err)) from None
        before = self.hosts.get(name)
        if not self.hosts.heartbeat(name, agent_id_of(body), sorted(set(lost)), state, live, paused, health, boinc):
            raise ApiError(404, f"name: {name!r} is not registered here")
        row = self.hosts.get(name)
        self._changes(before, row)
        if self.boinc is not None:
            self.boinc.beat(name, boinc)
        return {"running": self.busy().get(name, 0), "epoch": self.epoch, "directives": self.directives(row)}

    def directives(self, row: HostRow) -> dict:
        """What the head asks of an agent: the operator's pauses and drains, that its
        science step aside for training, that it check its health."""
        failures = row.health.get("failures")
        out = {"admin": row.admin, "science_yield": row.name in self.training(), "check_host": bool(failures)}
        attach = self.boinc.directive(row.name) if self.boinc is not None else []
        if attach:
            out["boinc_attach"] = attach
        return out

    def _changes(self, before: HostRow | None, row: HostRow) -> None:
        """Pauses, resumes and health as the agent reports them: logged and kept as events."""
        was = (before.paused if before else {}) or {}
        now = row.paused or {}
        if now.get("host") != was.get("host"):
            kind = "paused" if now.get("host") else "resumed"
            detail = now.get("host") and "; ".join(now.get("detail") or [now["host"]])
            self._event(row.name, kind, detail or f"was {was.get('host')}")
        if (now.get("gpus") or {}) != (was.get("gpus") or {}):
            self._event(row.name, "gpus", "; ".join(f"GPU {i} {r}" for i, r in sorted((now.get("gpus") or {}).items()))
                        or "every GPU running")
        if now.get("science") != was.get("science"):
            self._event(row.name, "science", f"science {'steps aside: ' + now['science'] if now.get('science') else 'back'}")
        health = row.health
        failures = health.get("failures")
        if failures and health.get("host") and not failures.get("acked"):
            failures["acked"] = True  # the agent took the request: the next healthy beat is its check passing
            self.hosts.set_json(row.name, "health_json", health)
        elif failures and failures.get("acked") and not health.get("host"):
            del health["failures"]
            self.hosts.set_json(row.name, "health_json", health)
            self.failures.pop(row.name, None)
            self._event(row.name, "healthy", "its health check passed; it takes work again")
        was_sick = (before.health if before else {}).get("gpus") or {}
        for index, why in (health.get("gpus") or {}).items():
            if index not in was_sick:
                self._event(row.name, "unhealthy", f"GPU {index}: {why}")
        for index in was_sick:
            if index not in (health.get("gpus") or {}):
                self._event(row.name, "healthy", f"GPU {index} passed its health check")

    def _event(self, host: str, kind: str, detail: str) -> None:
        self.hosts.event(host, kind, detail)
        self.log(f"host {host} {kind}: {detail}")

    def task_failed(self, host: str, why: str) -> None:
        """A task on `host` failed (not its node dying: that is a lost host). Several
        in a short while make the PC unhealthy until its own check passes."""
        now = time.time()
        recent = [t for t in self.failures.get(host, []) if now - t < FAILURE_WINDOW_S] + [now]
        self.failures[host] = recent
        row = self.hosts.get(host)
        if len(recent) < FAILURES_TO_CHECK or row is None or row.health.get("failures"):
            return
        health = {**row.health, "failures": {"why": f"{len(recent)} tasks failed in {FAILURE_WINDOW_S / 60:.0f} min "
                                                    f"(last: {why[:120]})", "since": now, "acked": False}}
        self.hosts.set_json(host, "health_json", health)
        self._event(host, "unhealthy", health["failures"]["why"] + "; it takes no work until its check passes")

    def api_admin(self, body: dict) -> dict:
        """The operator pauses, drains or resumes a PC or one of its GPUs, with a reason:
        paused work steps aside now; drained work finishes (a pool worker leaves at its
        round's end) and takes no more. Kept across restarts of the head."""
        name = field(body, "name", str)
        action = body.get("action")
        if action not in ("pause", "resume", "drain"):
            raise ApiError(400, "action: expected pause, resume or drain")
        reason = body.get("reason") or ""
        if not isinstance(reason, str) or len(reason) > 300:
            raise ApiError(400, "reason: expected a line of text")
        row = self.hosts.get(name)
        if row is None:
            raise ApiError(404, f"name: no host {name!r}")
        gpu = body.get("gpu")
        if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int) or
                                not 0 <= gpu < len(row.info.gpus)):
            raise ApiError(400, f"gpu: {name} has GPUs 0 to {len(row.info.gpus) - 1}" if row.info.gpus
                                else f"gpu: {name} has no GPU")
        admin = dict(row.admin)
        entry = {"state": {"pause": "paused", "drain": "drained"}.get(action), "reason": reason, "at": time.time()}
        if gpu is None:
            admin["host"] = entry if action != "resume" else None
            if action == "resume":
                admin["gpus"] = {}  # resuming a PC resumes its GPUs too
        else:
            gpus = dict(admin.get("gpus") or {})
            gpus[str(gpu)] = entry if action != "resume" else None
            admin["gpus"] = {k: v for k, v in gpus.items() if v}
        admin = {k: v for k, v in admin.items() if v}
        self.hosts.set_json(name, "admin_json", admin)
        target = name if gpu is None else f"{name} GPU {gpu}"
        self._event(name, {"pause": "operator paused", "drain": "drained", "resume": "operator resumed"}[action],
                    f"{target}: {reason or 'no reason given'}")
        return {"host": name, "admin": admin}

    def api_leave(self, body: dict) -> dict:
        name = field(body, "name", str)
        if self.hosts.set_state(name, "left", agent_id_of(body)):
            self.log(f"host {name} left")
        return {"ok": True}

    def api_forget(self, body: dict) -> dict:
        """The operator frees a name whose PC is gone for good (it keeps its secret otherwise)."""
        name = field(body, "name", str)
        row = self.hosts.get(name)
        if row is None:
            raise ApiError(404, f"name: no host {name!r}")
        if row.state == "alive":
            raise ApiError(409, f"name: {name!r} is alive; stop its agent first")
        self.hosts.forget(name)
        self.log(f"host {name} forgotten: its name is free for another PC")
        return {"ok": True}

    def sd_targets(self) -> list[dict]:
        return [{"targets": [row.metrics_addr], "labels": {"host": row.name}}
                for row in self.hosts.alive() if row.metrics_addr]

    def sd_page(self, _query: dict) -> tuple[bytes, str]:
        return json.dumps(self.sd_targets()).encode(), "application/json"

    def check_lost(self) -> None:
        """Hosts whose beats stopped, or whose Ray node is gone, become lost."""
        for name in self.hosts.mark_silent_lost(time.time() - LOST_AFTER_S):
            self.log(f"host {name} lost (no heartbeat for {LOST_AFTER_S:.0f} s)")
            self.on_lost(name)
        for row in self.hosts.alive():
            if self.nodes.alive(row.ray_node_id) is None and time.time() - row.joined_at > LOST_AFTER_S:
                self.hosts.set_state(row.name, "lost")
                self.log(f"host {row.name} lost (its Ray node is gone)")
                self.on_lost(row.name)
