"""The PCs the head knows: their records (the `hosts` table) and the agents' API
(check a name, register, heartbeat, leave), plus what `cluster status` and
Prometheus' service discovery read from them."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from workers.records import HostInfo

from .db import Database
from .http import ApiError, Route
from .raynodes import HOST_LABEL, RayNodes

LOST_AFTER_S = 20.0  # an agent beats every 5 s; three missed beats and it is lost


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


class HostRecords:
    """The hosts table. Every method is one statement under the database's lock."""

    def __init__(self, db: Database):
        self.db = db

    def get(self, name: str) -> HostRow | None:
        with self.db.lock:
            row = self.db.conn.execute("SELECT * FROM hosts WHERE name = ?", (name,)).fetchone()
        return _host_row(row) if row else None

    def all(self) -> list[HostRow]:
        with self.db.lock:
            rows = self.db.conn.execute("SELECT * FROM hosts ORDER BY name").fetchall()
        return [_host_row(r) for r in rows]

    def alive(self) -> list[HostRow]:
        return [r for r in self.all() if r.state == "alive"]

    def upsert(self, info: HostInfo, agent_id: str, metrics_addr: str | None, ray_node_id: str | None) -> None:
        now = time.time()
        with self.db.lock:
            self.db.conn.execute(
                """INSERT INTO hosts (name, agent_id, state, info_json, speed_gflops, cpu_only,
                                      metrics_addr, ray_node_id, joined_at, last_seen)
                   VALUES (?, ?, 'alive', ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET
                     agent_id=excluded.agent_id, state='alive', info_json=excluded.info_json,
                     speed_gflops=excluded.speed_gflops, cpu_only=excluded.cpu_only,
                     metrics_addr=excluded.metrics_addr, ray_node_id=excluded.ray_node_id,
                     lost_gpus='[]', joined_at=excluded.joined_at, last_seen=excluded.last_seen""",
                (info.name, agent_id, json.dumps(info.to_dict()), info.speed_gflops,
                 int(info.cpu_only), metrics_addr, ray_node_id, now, now))

    def heartbeat(self, name: str, agent_id: str, lost_gpus: list[int]) -> bool:
        """Record a beat; False when no live registration of this agent exists."""
        with self.db.lock:
            cur = self.db.conn.execute(
                "UPDATE hosts SET last_seen = ?, state = 'alive', lost_gpus = ? "
                "WHERE name = ? AND agent_id = ? AND state != 'left'",
                (time.time(), json.dumps(lost_gpus), name, agent_id))
        return cur.rowcount == 1

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
    (name, agent_id, state, info_json, _speed, _cpu_only, metrics_addr, ray_node_id,
     lost_gpus, joined_at, last_seen) = row
    return HostRow(name=name, agent_id=agent_id, state=state, info=HostInfo.from_dict(json.loads(info_json)),
                   metrics_addr=metrics_addr, ray_node_id=ray_node_id, lost_gpus=json.loads(lost_gpus),
                   joined_at=joined_at, last_seen=last_seen)


def field(body: dict, name: str, kind: type):
    """body[name] if it is a `kind`, else a one-line 400."""
    value = body.get(name)
    if not isinstance(value, kind):
        raise ApiError(400, f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


class HostsApi:
    """The agents' side of the API, and the fleet views built on the hosts table.

    `running` says what runs where (host -> descriptions) and `busy` how many
    tasks each host has; `on_lost` is told of every host that goes lost; `about`
    is added to the status (the head's addresses)."""

    def __init__(self, hosts: HostRecords, nodes: RayNodes, epoch: float,
                 running: Callable[[], dict[str, list[str]]], busy: Callable[[], dict[str, int]],
                 on_lost: Callable[[str], None], log: Callable[[str], None], about: dict):
        self.hosts = hosts
        self.nodes = nodes
        self.epoch = epoch  # tells agents this head (and its Ray cluster) is a new one
        self.running = running
        self.busy = busy
        self.on_lost = on_lost
        self.log = log
        self.about = about  # the head's own addresses, shown with the hosts

    def routes(self) -> dict:
        return {
            ("GET", "/api/status"): Route(self.api_status),
            ("POST", "/api/hosts/check"): Route(self.api_check),
            ("POST", "/api/hosts/register"): Route(self.api_register),
            ("POST", "/api/hosts/heartbeat"): Route(self.api_heartbeat),
            ("POST", "/api/hosts/leave"): Route(self.api_leave),
            ("GET", "/sd/agents"): Route(self.sd_page, kind="page", open=True),
        }

    def api_status(self, _body: dict) -> dict:
        running = self.running()
        nodes = []
        for row in self.hosts.all():
            info = row.info
            ray_node = self.nodes.node_of(row.name) if row.state == "alive" else None
            nodes.append({
                "name": row.name, "state": row.state, "cpu_only": info.cpu_only,
                "speed_gflops": round(info.speed_gflops, 1),
                "cpu": {"model": info.cpu_model, "cores": info.cpu_cores, "ram_bytes": info.ram_bytes},
                "gpus": [{"index": g.index, "name": g.name, "vram_bytes": g.vram_bytes,
                          "compute_capability": g.compute_capability, "uuid": g.uuid,
                          "speed_gflops": g.speed_gflops, "lost": g.index in row.lost_gpus}
                         for g in info.gpus],
                "running": running.get(row.name, []),
                "ray_labels": {k: v for k, v in (ray_node or {}).get("Labels", {}).items()
                               if k.startswith("salvage.io/")},
                "metrics": row.metrics_addr, "last_seen": row.last_seen,
                "simulated": info.simulated, "notes": info.notes,
            })
        return {"nodes": nodes, **self.about}

    def api_check(self, body: dict) -> dict:
        name = field(body, "name", str)
        row = self.hosts.get(name)
        if row and row.state == "alive" and row.agent_id != body.get("agent_id"):
            raise ApiError(409, f"name: an agent named {name!r} is already in the cluster; "
                                "stop it first or join with another --name")
        return {"ok": True}

    def api_register(self, body: dict) -> dict:
        try:
            info = HostInfo.from_dict(field(body, "host", dict))
        except TypeError as err:
            raise ApiError(400, f"host: malformed host record ({err})") from None
        agent_id = field(body, "agent_id", str)
        self.api_check({"name": info.name, "agent_id": agent_id})
        node = self.nodes.node_of(info.name)
        if node is None:
            self.nodes.refresh()
            node = self.nodes.node_of(info.name)
        if node is None:
            raise ApiError(425, f"ray: no live Ray node labelled {HOST_LABEL}={info.name} yet")
        self.hosts.upsert(info, agent_id, body.get("metrics_addr"), node["NodeID"])
        self.log(f"host {info.name} joined ({len(info.gpus)} GPU(s), {info.speed_gflops:.0f} GFLOP/s)")
        return {"ok": True}

    def api_heartbeat(self, body: dict) -> dict:
        name = field(body, "name", str)
        lost = [int(i) for i in body.get("lost_gpus", []) if isinstance(i, int)]
        if not self.hosts.heartbeat(name, field(body, "agent_id", str), lost):
            raise ApiError(404, f"name: {name!r} is not registered here")
        return {"running": self.busy().get(name, 0), "epoch": self.epoch}

    def api_leave(self, body: dict) -> dict:
        name = field(body, "name", str)
        if self.hosts.set_state(name, "left", field(body, "agent_id", str)):
            self.log(f"host {name} left")
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
            if self.nodes.node_of(row.name) is None and time.time() - row.joined_at > LOST_AFTER_S:
                self.hosts.set_state(row.name, "lost")
                self.log(f"host {row.name} lost (its Ray node is gone)")
                self.on_lost(row.name)
