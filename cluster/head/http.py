"""The head's HTTP server: one routes table of small JSON endpoints, file
streams (checkpoints) and plain pages (`/metrics`), on the stdlib server.
Errors are `{"error": "one line"}`."""
from __future__ import annotations

import hmac
import json
import shutil
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

MAX_BODY = 8 * 2**20


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Route:
    """One endpoint. `kind` says what its handler takes and returns:
    json: the body (a dict) -> a JSON-able reply;
    stream: (query, rfile, length) -> a dict, or a Path whose bytes are the reply;
    page: the query -> (bytes, content type).
    `open` endpoints answer without the cluster's token."""

    handler: Callable
    kind: str = "json"
    open: bool = False


Routes = dict[tuple[str, str], Route]


class Handler(BaseHTTPRequestHandler):
    routes: Routes  # these three are set on the subclass made by `serve`
    token: str | None
    log: Callable[[str], None]
    server_version = "salvage-head"

    def log_message(self, fmt, *args):  # quiet: Prometheus scrapes every few seconds
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, path: Path) -> None:
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
        if not self.token:
            return True
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given, self.token)

    def _length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _body(self) -> dict:
        length = self._length()
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
            route = self.routes.get((method, path))
            # An unknown path needs the token too: say nothing about which paths exist.
            if (route is None or not route.open) and not self._authorised():
                raise ApiError(401, "token: this cluster needs its token (--token, printed by `salvage cluster up`)")
            if route is None:
                raise ApiError(404, f"path: no such endpoint {method} {path}")
            if route.kind == "page":
                body, content_type = route.handler(query)
                self._send(200, body, content_type)
            elif route.kind == "stream":
                # Large bodies and replies (checkpoints) go through files, not memory.
                result = route.handler(query, self.rfile, self._length())
                if isinstance(result, dict):
                    self._json(200, result)
                else:
                    self._send_file(result)
            else:
                body = self._body() if method == "POST" else {}
                self._json(200, route.handler(body))
        except ApiError as err:
            self._json(err.status, {"error": str(err)})
        except Exception as err:  # a bad request must never take the coordinator down
            self.log(f"error serving {method} {path}: {err!r}")
            self._json(500, {"error": f"internal: {type(err).__name__}: {err}"})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")


def serve(routes: Routes, host: str, port: int, token: str | None,
          log: Callable[[str], None]) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"routes": routes, "token": token, "log": staticmethod(log)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
