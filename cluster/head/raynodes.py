"""The head's view of Ray's nodes: which node is a host's, and which died.

The coordinator's loop refreshes it once a second; dispatch and placement read
it many times a second without asking Ray each time.
"""
from __future__ import annotations

import threading

import ray

HOST_LABEL = "salvage.io/host"
AGENT_LABEL = "salvage.io/agent"


class RayNodes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.nodes: list[dict] = []
        # Nodes a task saw die. Ray lists a dead node as alive for 10-20 s more, and
        # anything placed there meanwhile is lost with it (science units, a job's start).
        self.dead: set[str] = set()
        self.resources: tuple[dict, dict] = ({}, {})  # (total, available)

    def refresh(self) -> None:
        with self._lock:
            nodes = ray.nodes()
            total, free = ray.cluster_resources(), ray.available_resources()
        self.nodes = nodes
        self.resources = (total, free)

    def alive(self, node_id: str | None) -> dict | None:
        """The node with this id if Ray lists it alive and no task saw it die."""
        if not node_id or node_id in self.dead:
            return None
        for node in self.nodes:
            if node["NodeID"] == node_id and node.get("Alive"):
                return node
        return None

    def find(self, host: str, agent_id: str) -> dict | None:
        """The live node that agent `agent_id` of `host` started (its labels say so).
        A registration binds to it; work then goes to that node only, never to
        another that merely carries the same host label."""
        for node in self.nodes:
            labels = node.get("Labels", {})
            if node.get("Alive") and labels.get(HOST_LABEL) == host and labels.get(AGENT_LABEL) == agent_id \
                    and node["NodeID"] not in self.dead:
                return node
        return None

    def mark_dead(self, node_id: str | None) -> None:
        if node_id:
            self.dead.add(node_id)
