"""The head's HTTP server: one routes table of small JSON endpoints, file
streams (checkpoints) and pages (`/metrics`, the status page), on the stdlib
server. Errors are `{"error": "one line"}`.

It fails closed. Every route needs the cluster's token (a bearer header, or
the status page's cookie) unless it is marked open; a malformed or non-ASCII
Authorization header is a 401, never a crash. Bodies have a bounded, checked
length (400 for a bad one, 413 for one too large), every connection a read
timeout, and the server a bounded number of connections (503 past it). On the
LAN the whole server speaks TLS with the head's own certificate.
"""
from __future__ import annotations

import hmac
import json
import re
import shutil
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from .db import locked
from .files import disk_full

MAX_BODY = 8 * 2**20
MAX_DRAIN = 64 * 2**20  # past this, an oversized body is cut off rather than read to say 413
READ_TIMEOUT_S = 15.0
MAX_CONNECTIONS = 64
COOKIE = "salvage_token"
NEEDS_TOKEN = "token: this cluster needs its token (--token-file, the file `salvage cluster up` wrote)"


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
    `open` endpoints answer without the cluster's token. `login` routes are the
    status page's: they also take its cookie (set by POST /login), and `/` shows
    an unauthorised browser the login form rather than a 401."""

    handler: Callable
    kind: str = "json"
    open: bool = False
    login: bool = False


Routes = dict[tuple[str, str], Route]


def submission_key(body: dict) -> str | None:
    """A submission's idempotency key, if its client sent one (then a retry is safe)."""
    key = body.get("idempotency_key")
    if key is None:
        return None
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_-]{8,100}", key):
        raise ApiError(400, "idempotency_key: expected 8 to 100 letters, digits, '-' or '_'")
    return key


def session_value(token: str) -> str:
    """The status page's cookie: derived from the token, so the cookie a browser
    keeps is not the token itself (it opens the page, and only the page's reads)."""
    return hmac.new(token.encode(), b"salvage status page", "sha256").hexdigest()


def token_matches(given: str | None, token: str) -> bool:
    """Compare as bytes: a header is text in latin-1, and hmac refuses non-ASCII str."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


class Handler(BaseHTTPRequestHandler):
    # Set on the subclass made by `serve`.
    routes: Routes
    token: str
    log: Callable[[str], None]
    login_form: Callable[[str | None], bytes] | None
    server_version = "salvage-head"
    # HTTP/1.0 (the default): one request per connection, so an answer sent before
    # a body was read (a 401, a 413) can never leave that body to be read as a request.
    timeout = READ_TIMEOUT_S  # a client that stops sending mid-request is dropped, not waited for

    def log_message(self, fmt, *args):  # quiet: Prometheus scrapes every few seconds
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
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

    def _authorised(self, route: Route | None = None) -> bool:
        """The bearer token; for the status page's own routes, its cookie too."""
        header = self.headers.get("Authorization")
        if header is not None:
            return token_matches(header.removeprefix("Bearer ").strip(), self.token)
        if route is None or not route.login:
            return False
        jar = cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except cookies.CookieError:
            return False
        return COOKIE in jar and token_matches(jar[COOKIE].value, session_value(self.token))

    def _login(self) -> None:
        """POST /login from the status page's form: the right token sets the page's
        cookie (HttpOnly, this site only) and goes back to the page."""
        given = self._form().get("token", "").strip()
        if not token_matches(given, self.token):
            self._send(401, self.login_form("token: that is not this cluster's token"), "text/html; charset=utf-8")
            return
        cookie = f"{COOKIE}={session_value(self.token)}; HttpOnly; SameSite=Strict; Path=/"
        self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})

    def _length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        if not raw.strip().isdigit():
            self.close_connection = True  # the rest of the stream cannot be framed
            raise ApiError(400, f"content-length: expected a number of bytes, got {raw[:20]!r}")
        return int(raw)

    def _too_large(self, length: int, limit: int) -> ApiError:
        """Read and drop what the client is sending (so that it reads our answer
        rather than a broken pipe), unless it is absurd; then say 413."""
        if length <= MAX_DRAIN:
            remaining = length
            while remaining:
                chunk = self.rfile.read(min(remaining, 2**20))
                if not chunk:
                    break
                remaining -= len(chunk)
        self.close_connection = True
        return ApiError(413, f"body: larger than {limit} bytes")

    def _body(self) -> dict:
        length = self._length()
        if length > MAX_BODY:
            raise self._too_large(length, MAX_BODY)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            self.close_connection = True
            raise ApiError(400, "body: shorter than its Content-Length")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(400, "body: expected JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body: expected a JSON object")
        return body

    def _form(self) -> dict:
        length = self._length()
        if length > 4096:
            raise self._too_large(length, 4096)
        text = self.rfile.read(length).decode("utf-8", "replace")
        return dict(urllib.parse.parse_qsl(text))

    def _dispatch(self, method: str) -> None:
        path, _, query_text = self.path.partition("?")
        query = dict(urllib.parse.parse_qsl(query_text))
        route = self.routes.get((method, path))
        try:
            if (method, path) == ("POST", "/login") and self.login_form is not None:
                self._login()
                return
            # An unknown path needs the token too: say nothing about which paths exist.
            if (route is None or not route.open) and not self._authorised(route):
                if route is not None and route.login and route.kind == "page" and path == "/":
                    self._send(200, self.login_form(None), "text/html; charset=utf-8")
                    return
                raise ApiError(401, NEEDS_TOKEN)
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
        except (ConnectionError, socket.timeout):
            self.close_connection = True  # the client went away or stalled: nothing to answer
        except Exception as err:  # a bad request must never take the coordinator down
            if disk_full(err):
                self._json(507, {"error": "disk: the head's disk is full; nothing was changed, try again "
                                          "once space is freed"})
                return
            if locked(err):  # another process held the database past its busy wait
                self._json(503, {"error": "database: busy with another writer; nothing was changed, try again"})
                return
            self.log(f"error serving {method} {path}: {err!r}")
            self.close_connection = True
            try:
                self._json(500, {"error": f"internal: {type(err).__name__}: {str(err).splitlines()[0][:200]}"})
            except OSError:
                pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")


class BoundedServer(ThreadingHTTPServer):
    """At most MAX_CONNECTIONS connections are served at once; past that a new
    connection is answered 503 and closed at once, so that idle or hostile
    sockets cannot take every thread of the head. With TLS, the handshake runs
    in the connection's own thread, under its read timeout."""

    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # a client that breaks its connection is not the head's error; routes log their own

    def __init__(self, address, handler, tls: ssl.SSLContext | None):
        super().__init__(address, handler)
        self.tls = tls
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            if self.tls is not None:
                request.settimeout(READ_TIMEOUT_S)
                request = self.tls.wrap_socket(request, server_side=True)
            super().process_request_thread(request, client_address)
        except (OSError, ssl.SSLError):
            self.shutdown_request(request)
        finally:
            self.slots.release()


def serve(routes: Routes, host: str, port: int, token: str, log: Callable[[str], None],
          tls: ssl.SSLContext | None = None,
          login_form: Callable[[str | None], bytes] | None = None) -> BoundedServer:
    if not token:
        raise ValueError("token: the head never serves without one")  # fail closed, whatever the caller did
    handler = type("BoundHandler", (Handler,), {"routes": routes, "token": token, "log": staticmethod(log),
                                                 "login_form": staticmethod(login_form) if login_form else None})
    return BoundedServer((host, port), handler, tls)
