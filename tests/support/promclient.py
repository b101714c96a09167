"""A small client for a real Prometheus's HTTP API, for the monitoring tests."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any


class Prometheus:
    def __init__(self, address: str) -> None:
        self.address = address

    def get(self, path: str, **params: str) -> Any:
        url = f"http://{self.address}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            payload = json.load(response)
        assert payload["status"] == "success", payload
        return payload["data"]

    def query(self, expr: str) -> list[Any]:
        data = self.get("/api/v1/query", query=expr)
        # A scalar (`time() - ...` folded) is one value, never "no data".
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def alerts(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/alerts")["alerts"]
