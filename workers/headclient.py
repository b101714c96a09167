"""The one client of the head's HTTP API, for the agent, the tasks on a PC and
the CLI: small JSON requests, and files streamed both ways. Stdlib only."""
from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path


class HeadError(Exception):
    """The head refused a request; `str()` is its one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HeadUnreachable(Exception):
    pass


def _error(err: urllib.error.HTTPError) -> HeadError:
    try:
        message = json.loads(err.read()).get("error", err.reason)
    except ValueError:
        message = str(err.reason)
    return HeadError(err.code, message)


def fingerprint(pem: str) -> str:
    """`sha256:` and the hex digest of a PEM certificate's DER bytes, as the join line shows it."""
    return "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def fetch_ca(host: str, port: int, expected: str, timeout: float = 10.0) -> str:
    """The head's CA certificate (PEM), fetched once without verification and
    accepted only if its fingerprint is the one the join line carries; every
    later request is verified against it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://{host}:{port}/api/tls/ca", timeout=timeout, context=context) as r:
            pem = r.read().decode("ascii", errors="replace")
        got = fingerprint(pem)
    except (OSError, ValueError) as err:
        raise HeadUnreachable(f"https://{host}:{port}: cannot fetch the head's CA ({err})") from None
    if not hmac.compare_digest(got, expected.strip().lower()):
        raise HeadError(495, f"ca-fingerprint: the head at {host}:{port} shows CA {got}, not {expected}; "
                             "is this the head whose join line you copied?")
    return pem


class HeadClient:
    """`ca_file`: the head's CA, for a head on the LAN (HTTPS); None on loopback (HTTP)."""

    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 5.0,
                 ca_file: Path | None = None):
        self.base = f"{'https' if ca_file else 'http'}://{host}:{port}"
        self.token = token
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    def _request(self, method: str, path: str, data=None, content_type: str = "application/json",
                 length: int | None = None) -> urllib.request.Request:
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", content_type)
        if length is not None:
            req.add_header("Content-Length", str(length))
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        return req

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        try:
            with urllib.request.urlopen(self._request(method, path, data), timeout=self.timeout,
                                        context=self.context) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            raise _error(err) from None
        except (urllib.error.URLError, OSError) as err:
            raise HeadUnreachable(f"{self.base}: {getattr(err, 'reason', err)}") from None

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def post(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body)

    def upload(self, path: str, source: Path, timeout: float = 300.0) -> dict:
        """POST the file `source` as the body, streamed from disk."""
        with open(source, "rb") as f:  # an open file survives the writer's atomic replace
            req = self._request("POST", path, f, "application/octet-stream", length=source.stat().st_size)
            try:
                with urllib.request.urlopen(req, timeout=timeout, context=self.context) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as err:
                raise _error(err) from None
            except (urllib.error.URLError, OSError) as err:
                raise HeadUnreachable(f"{self.base}: {getattr(err, 'reason', err)}") from None

    def download(self, path: str, dest: Path, timeout: float = 300.0) -> bool:
        """GET `path` into the file `dest`; False if the head has none (404)."""
        try:
            with urllib.request.urlopen(self._request("GET", path), timeout=timeout,
                                        context=self.context) as resp, \
                    open(dest, "wb") as out:
                shutil.copyfileobj(resp, out)
            return True
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return False
            raise _error(err) from None
        except (urllib.error.URLError, OSError) as err:
            raise HeadUnreachable(f"{self.base}: {getattr(err, 'reason', err)}") from None
