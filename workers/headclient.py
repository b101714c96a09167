"""The one client of the head's HTTP API, for the agent, the tasks on a PC and
the CLI: small JSON requests, and files streamed both ways. Stdlib only."""
from __future__ import annotations

import json
import shutil
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


class HeadClient:
    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 5.0):
        self.base = f"http://{host}:{port}"
        self.token = token
        self.timeout = timeout

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
            with urllib.request.urlopen(self._request(method, path, data), timeout=self.timeout) as resp:
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
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as err:
                raise _error(err) from None
            except (urllib.error.URLError, OSError) as err:
                raise HeadUnreachable(f"{self.base}: {getattr(err, 'reason', err)}") from None

    def download(self, path: str, dest: Path, timeout: float = 300.0) -> bool:
        """GET `path` into the file `dest`; False if the head has none (404)."""
        try:
            with urllib.request.urlopen(self._request("GET", path), timeout=timeout) as resp, \
                    open(dest, "wb") as out:
                shutil.copyfileobj(resp, out)
            return True
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return False
            raise _error(err) from None
        except (urllib.error.URLError, OSError) as err:
            raise HeadUnreachable(f"{self.base}: {getattr(err, 'reason', err)}") from None
