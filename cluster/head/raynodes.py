"""The head's view of Ray's nodes: which node is a host's, and which died.

The coordinator's loop refreshes it once a second; dispatch and placement read
it many times a second without asking Ray each time.
"""
from __future__ import annotations

import threading

import ray

HOST_LABEL = "salvage.io/host"


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

    def node_of(self, host: str) -> dict | None:
        """The live Ray node labelled as `host`'s, if any."""
        for node in self.nodes:
            if node.get("Alive") and node.get("Labels", {}).get(HOST_LABEL) == host \
                    and node["NodeID"] not in self.dead:
                return node
        return None

    def mark_dead(self, node_id: str | None) -> None:
        if node_id:
            self.dead.add(node_id)
