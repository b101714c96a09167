"""The agent's side of the head's HTTP API: small JSON requests, stdlib only."""
from __future__ import annotations

import json
import urllib.error
import urllib.request


class HeadError(Exception):
    """The head refused a request; `str()` is its one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HeadUnreachable(Exception):
    pass


def split_address(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    if not host:
        return address, default_port
    if not port.isdigit():
        raise ValueError(f"address: expected HOST or HOST:PORT, got {address!r}")
    return host, int(port)


class HeadClient:
    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 5.0):
        self.base = f"http://{host}:{port}"
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read()).get("error", err.reason)
            except ValueError:
                message = str(err.reason)
            raise HeadError(err.code, message) from None
        except (urllib.error.URLError, OSError) as err:
            raise HeadUnreachable(f"{self.base}: {getattr(err, 'reason', err)}") from None

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def post(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body)
