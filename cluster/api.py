"""The head's HTTP service: the agents' API, `/metrics`, and Prometheus http_sd.

Small JSON endpoints on the stdlib server; errors are `{"error": "one line"}`.
"""
from __future__ import annotations

import hmac
import json
import shutil
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from .coordinator import Coordinator

MAX_BODY = 8 * 2**20


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    coordinator: "Coordinator"  # set on the subclass made by `serve`
    server_version = "salvage-head"

    def log_message(self, fmt, *args):  # quiet: Prometheus scrapes every few seconds
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, path) -> None:
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(path, "rb") as f:
            shutil.copyfileobj(f, self.wfile)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode())

    def _authorised(self) -> bool:
        token = self.coordinator.token
        if not token:
            return True
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given, token)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, f"body: larger than {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise ApiError(400, "body: expected JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body: expected a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        path, _, query_text = self.path.partition("?")
        query = dict(urllib.parse.parse_qsl(query_text))
        try:
            if method == "GET" and path == "/metrics":
                self._send(200, generate_latest(self.coordinator.registry), CONTENT_TYPE_LATEST)
                return
            if method == "GET" and path == "/sd/agents":
                self._json(200, self.coordinator.sd_targets())
                return
            if method == "GET" and path == "/api/health":
                self._json(200, {"ok": True})
                return
            if not self._authorised():
                raise ApiError(401, "token: this cluster needs its token (--token, printed by `salvage cluster up`)")
            stream = self.coordinator.stream_routes.get((method, path))
            if stream is not None:
                # Large bodies and replies (checkpoints) go through files, not memory.
                length = int(self.headers.get("Content-Length") or 0)
                result = stream(query, self.rfile, length)
                if isinstance(result, dict):
                    self._json(200, result)
                else:
                    self._send_file(result)
                return
            route: Callable | None = self.coordinator.routes.get((method, path))
            if route is None:
                raise ApiError(404, f"path: no such endpoint {method} {path}")
            body = self._body() if method == "POST" else {}
            self._json(200, route(body))
        except ApiError as err:
            self._json(err.status, {"error": str(err)})
        except Exception as err:  # a bad request must never take the coordinator down
            self.coordinator.log(f"error serving {method} {path}: {err!r}")
            self._json(500, {"error": f"internal: {type(err).__name__}: {err}"})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")


def serve(coordinator: "Coordinator", host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"coordinator": coordinator})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
