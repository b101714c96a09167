"""BOINC's GUI RPC, spoken to the BOINC client on this PC's loopback.

The protocol (facts from BOINC's lib/gui_rpc_client*.cpp and
client/gui_rpc_server_ops.cpp): over one TCP connection, each request is
`<boinc_gui_rpc_request>...</boinc_gui_rpc_request>` and each reply
`<boinc_gui_rpc_reply>...</boinc_gui_rpc_reply>`, both ended by a 0x03
byte. Operations that change anything need authorisation first: `<auth1/>`
returns a nonce, `<auth2>` sends md5(nonce + password); a refused password
gets `<unauthorized/>` and the client then drops the connection.

Why not the PyPI `boinc-client` package (1.12.1, read before writing this):
it pulls in lxml, marshmallow and a pinned xmltodict, puts URLs and account
keys into requests without escaping them, connects in its constructor,
leaves its call lock held when a call fails, and reports a refused password
as a plain False. This module needs the standard library only.
"""
from __future__ import annotations

import hashlib
import re
import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from .compute import TASK_STATES, ClientError, ModeState, Overview, ProjectInfo

DEFAULT_PORT = 31416
# Where Debian/Ubuntu (boinc-client) and BOINC's own Linux installer keep the password.
PASSWORD_FILES = (
    Path("/var/lib/boinc-client/gui_rpc_auth.cfg"),
    Path("/etc/boinc-client/gui_rpc_auth.cfg"),
    Path("/var/lib/boinc/gui_rpc_auth.cfg"),
)
MODE_NAMES = {1: "always", 2: "auto", 3: "never"}  # BOINC's RUN_MODE_* numbers
SET_MODES = ("always", "auto", "never", "restore")
MAX_REPLY_BYTES = 64 << 20  # get_state of a busy client is a few MB; anything far larger is not BOINC
# Client error numbers an attach can end with (BOINC's lib/error_numbers.h).
ATTACH_ERRORS = {-130: "already attached", -155: "missing account key", -189: "invalid URL",
                 -201: "attaching is disallowed on this client", -108: "cannot write the account file"}
ERR_IN_PROGRESS = -204
MSG_INFO = 1  # message priority; higher ones are alerts and errors


class BoincError(ClientError):
    """The BOINC client cannot be used now; `str()` is one line."""


class BoincUnreachable(BoincError):
    """Nothing answers at the address, or the connection broke or timed out."""


class BoincAuthError(BoincError):
    """The password is refused, or cannot be read."""


class BoincGarbage(BoincError):
    """Something answered, but not in BOINC's GUI RPC."""


class BoincRpcError(BoincError):
    """The client understood the request and refused it."""


class BoincAttachError(BoincRpcError):
    """A project attach the client could not complete."""


class _ConnectionLost(BoincUnreachable):
    """A kept connection broke: the client may have restarted, so one reconnect is worth it."""


@dataclass(frozen=True)
class CcStatus:
    """`get_cc_status`: what the client runs now, and why not."""

    run: ModeState  # CPU (task) mode: "never" stops every task, GPU ones too
    gpu: ModeState
    network: ModeState
    task_suspend_reason: int = 0  # BOINC's SUSPEND_REASON_* bits; 0: not suspended
    gpu_suspend_reason: int = 0
    network_suspend_reason: int = 0


@dataclass(frozen=True)
class Project:
    url: str
    name: str
    host_total_credit: float
    nrpc_failures: int = 0
    master_fetch_failures: int = 0
    last_rpc_time: float = 0.0  # Unix time of the last scheduler reply; 0: none yet


@dataclass(frozen=True)
class Task:
    name: str
    project_url: str
    state: str  # one of compute.TASK_STATES
    fraction_done: float = 0.0


@dataclass
class BoincState:
    """`get_state`, the parts salvage uses."""

    projects: list[Project] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)

    def task_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(TASK_STATES, 0)
        for task in self.tasks:
            counts[task.state] += 1
        return counts


@dataclass(frozen=True)
class Message:
    seqno: int
    project: str
    priority: int
    body: str


def canonical_url(url: str) -> str:
    """A master URL as the client stores it: http(s) scheme, no doubled slashes, trailing slash."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "http", url
    rest = re.sub("/{2,}", "/", rest)
    if not rest.endswith("/"):
        rest += "/"
    return f"{'https' if scheme.lower() == 'https' else 'http'}://{rest}"


def _same_site(a: str, b: str) -> bool:
    """Same master URL, whether http or https (as the client compares them)."""
    return canonical_url(a).split("://", 1)[1] == canonical_url(b).split("://", 1)[1]


# The client writes some names unescaped (a project called "A & B"); let a bare '&' through.
_BARE_AMP = re.compile(r"&(?!#?\w+;)")


def _parse(text: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        return ET.fromstring(_BARE_AMP.sub("&amp;", text))


def _snippet(text: str) -> str:
    return repr(text.strip()[:40])


class BoincRpc:
    """One GUI RPC connection, opened on first use and re-opened after a failure.
    One caller at a time (the agent's poll loop): it is not thread-safe.

    `password`: given directly; else read from `password_file`; else from the
    first of PASSWORD_FILES that exists; with none found, requests go
    unauthorised (a client with an empty password accepts them).
    """

    kind = "boinc"
    suspended = "never"

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, password: str | None = None,
                 password_file: Path | None = None, timeout_s: float = 5.0):
        self.host = host
        self.port = port
        self.password = password
        self.password_file = password_file
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._source = "no password file"  # where the password in use came from, for errors

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # --- the connection ---
    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _read_password(self) -> tuple[str | None, str]:
        """The password and where it came from (for error messages)."""
        if self.password is not None:
            return self.password, "the given password"
        candidates = [self.password_file] if self.password_file else list(PASSWORD_FILES)
        for path in candidates:
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                if self.password_file:
                    raise BoincAuthError(f"no GUI RPC password file at {path}") from None
                continue
            except PermissionError:
                raise BoincAuthError(f"cannot read the GUI RPC password in {path} "
                                     f"(permission denied; is this user in group 'boinc'?)") from None
            except OSError as err:
                raise BoincAuthError(f"cannot read the GUI RPC password in {path} ({err.strerror})") from None
            # The client keeps the first line, whitespace stripped.
            lines = text.splitlines()
            return (lines[0].strip() if lines else ""), str(path)
        return None, "no password file"

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except TimeoutError:
            raise BoincUnreachable(f"no BOINC client answers at {self.address} "
                                   f"(no connection within {self.timeout_s:g} s)") from None
        except OSError as err:
            reason = (err.strerror or str(err)).lower()
            raise BoincUnreachable(f"no BOINC client answers at {self.address} ({reason})") from None
        self._sock = sock
        try:
            password, self._source = self._read_password()  # after connecting: "no client" is the likelier news
            if password:
                self._authorize(password)
        except BoincError:
            self.close()
            raise

    def _authorize(self, password: str) -> None:
        reply = self._exchange("<auth1/>", "auth1")
        nonce = reply.findtext("nonce")
        if not nonce:
            raise BoincGarbage(f"garbage reply to auth1 from {self.address}: no nonce")
        digest = hashlib.md5((nonce.strip() + password).encode(), usedforsecurity=False).hexdigest()
        reply = self._exchange(f"<auth2>\n<nonce_hash>{digest}</nonce_hash>\n</auth2>", "auth2")
        if reply.find("authorized") is None:
            raise BoincGarbage(f"garbage reply to auth2 from {self.address}: neither authorized nor unauthorized")

    def _call(self, request: str, op: str) -> ET.Element:
        """One request and its reply's root; reconnects once when a kept connection went stale
        (the client was restarted since)."""
        fresh = self._sock is None
        if fresh:
            self._connect()
        try:
            return self._exchange(request, op)
        except _ConnectionLost:
            self.close()
            if fresh:
                raise
        except BoincError:
            self.close()
            raise
        self._connect()
        try:
            return self._exchange(request, op)
        except BoincError:
            self.close()
            raise

    def _exchange(self, request: str, op: str) -> ET.Element:
        sock = self._sock
        data = f"<boinc_gui_rpc_request>\n{request}\n</boinc_gui_rpc_request>\n\x03".encode()
        deadline = time.monotonic() + self.timeout_s
        try:
            sock.settimeout(self.timeout_s)
            sock.sendall(data)
            chunks: list[bytes] = []
            size = 0
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    raise _ConnectionLost(f"the BOINC client at {self.address} dropped the connection during {op}")
                end = chunk.find(b"\x03")
                chunks.append(chunk if end < 0 else chunk[:end])
                size += len(chunk)
                if end >= 0:
                    break
                if size > MAX_REPLY_BYTES:
                    raise BoincGarbage(f"garbage reply to {op} from {self.address}: "
                                       f"over {MAX_REPLY_BYTES >> 20} MB without an end mark")
        except TimeoutError:
            raise BoincUnreachable(f"the BOINC client at {self.address} did not answer {op} "
                                   f"within {self.timeout_s:g} s") from None
        except OSError as err:
            raise _ConnectionLost(f"the BOINC client at {self.address} dropped the connection during {op} "
                                  f"({(err.strerror or str(err)).lower()})") from None
        text = b"".join(chunks).decode("utf-8", errors="replace")
        try:
            root = _parse(text)
        except ET.ParseError as err:
            raise BoincGarbage(f"garbage reply to {op} from {self.address}: not XML ({err}; {_snippet(text)})") from None
        if root.tag != "boinc_gui_rpc_reply":
            raise BoincGarbage(f"garbage reply to {op} from {self.address}: <{root.tag}> is not a GUI RPC reply")
        if root.find("unauthorized") is not None:
            if self.password is None and not self.password_file and self._source == "no password file":
                raise BoincAuthError(f"the BOINC client at {self.address} wants a GUI RPC password and none was "
                                     f"found ({', '.join(map(str, PASSWORD_FILES))})")
            raise BoincAuthError(f"the BOINC client at {self.address} refused the GUI RPC password ({self._source})")
        return root

    def _expect_success(self, reply: ET.Element, op: str) -> None:
        if reply.find("success") is not None:
            return
        error = reply.findtext("error")
        if error is not None:
            raise BoincRpcError(f"the BOINC client refused {op}: {' '.join(error.split())}")
        raise BoincGarbage(f"garbage reply to {op} from {self.address}: neither success nor error")

    # --- reading ---
    def get_cc_status(self) -> CcStatus:
        status = self._call("<get_cc_status/>", "get_cc_status").find("cc_status")
        if status is None:
            raise BoincGarbage(f"garbage reply to get_cc_status from {self.address}: no <cc_status>")
        return CcStatus(
            run=self._mode(status, "task_mode"),
            gpu=self._mode(status, "gpu_mode"),
            network=self._mode(status, "network_mode"),
            task_suspend_reason=self._number(status, "task_suspend_reason", int, 0),
            gpu_suspend_reason=self._number(status, "gpu_suspend_reason", int, 0),
            network_suspend_reason=self._number(status, "network_suspend_reason", int, 0),
        )

    def _number(self, element: ET.Element, tag: str, kind: type, default=None):
        text = element.findtext(tag)
        if text is None:
            if default is None:
                raise BoincGarbage(f"garbage reply from {self.address}: <{tag}> missing")
            return default
        try:
            return kind(text.strip())
        except ValueError:
            raise BoincGarbage(f"garbage reply from {self.address}: <{tag}> is {_snippet(text)}, "
                               f"expected a number") from None

    def _mode_name(self, element: ET.Element, tag: str) -> str:
        number = self._number(element, tag, int)
        if number == 0:  # a client that never had its mode set: it treats 0 as auto
            return "auto"
        if number not in MODE_NAMES:
            raise BoincGarbage(f"garbage reply from {self.address}: <{tag}> is {number}, expected 1, 2 or 3")
        return MODE_NAMES[number]

    def _mode(self, status: ET.Element, tag: str) -> ModeState:
        return ModeState(current=self._mode_name(status, tag), perm=self._mode_name(status, f"{tag}_perm"),
                         temp_left_s=self._number(status, f"{tag}_delay", float, 0.0))

    def get_state(self) -> BoincState:
        state = self._call("<get_state/>", "get_state").find("client_state")
        if state is None:
            raise BoincGarbage(f"garbage reply to get_state from {self.address}: no <client_state>")
        projects = [Project(
            url=(p.findtext("master_url") or "").strip(),
            name=(p.findtext("project_name") or "").strip(),
            host_total_credit=self._number(p, "host_total_credit", float, 0.0),
            nrpc_failures=self._number(p, "nrpc_failures", int, 0),
            master_fetch_failures=self._number(p, "master_fetch_failures", int, 0),
            last_rpc_time=self._number(p, "last_rpc_time", float, 0.0),
        ) for p in state.findall("project")]
        tasks = [self._task(r) for r in state.findall("result")]
        return BoincState(projects=projects, tasks=tasks)

    def _task(self, result: ET.Element) -> Task:
        # BOINC's RESULT_* states 0-7, refined by the task's process state like the Manager does.
        state = self._number(result, "state", int, 0)
        active = result.find("active_task")
        if state == 2:
            if result.find("suspended_via_gui") is not None or result.find("project_suspended_via_gui") is not None:
                label = "suspended"
            elif active is None:
                label = "ready"
            else:
                process = self._number(active, "active_task_state", int, 0)
                label = {1: "running", 9: "suspended"}.get(process, "ready")
        elif state == 5 or result.find("ready_to_report") is not None:
            label = "ready_to_report"
        else:
            label = {0: "new", 1: "downloading", 3: "error", 4: "uploading", 6: "aborted", 7: "error"}.get(state, "error")
        return Task(name=(result.findtext("name") or "").strip(),
                    project_url=(result.findtext("project_url") or "").strip(), state=label,
                    fraction_done=self._number(active, "fraction_done", float, 0.0) if active is not None else 0.0)

    def get_message_seqno(self) -> int:
        """The newest message's number (0: none yet)."""
        return self._number(self._call("<get_message_count/>", "get_message_count"), "seqno", int)

    def get_messages(self, after: int = 0) -> list[Message]:
        """The event log's messages numbered above `after`, oldest first."""
        reply = self._call(f"<get_messages>\n<seqno>{int(after)}</seqno>\n</get_messages>", "get_messages")
        msgs = reply.find("msgs")
        if msgs is None:
            raise BoincGarbage(f"garbage reply to get_messages from {self.address}: no <msgs>")
        return [Message(seqno=self._number(m, "seqno", int), project=(m.findtext("project") or "").strip(),
                        priority=self._number(m, "pri", int, MSG_INFO),
                        body=" ".join((m.findtext("body") or "").split())) for m in msgs.findall("msg")]

    # --- changing ---
    def _set_mode(self, op: str, mode: str, duration_s: float) -> None:
        if mode not in SET_MODES:
            raise ValueError(f"mode: expected one of {', '.join(SET_MODES)}, got {mode!r}")
        if duration_s < 0:
            raise ValueError(f"duration_s: expected 0 (permanent) or more seconds, got {duration_s!r}")
        reply = self._call(f"<{op}>\n<{mode}/>\n<duration>{duration_s:f}</duration>\n</{op}>", op)
        self._expect_success(reply, op)

    def set_run_mode(self, mode: str, duration_s: float = 0.0) -> None:
        """CPU (task) mode; with a duration it is temporary and the permanent mode returns after."""
        self._set_mode("set_run_mode", mode, duration_s)

    def set_gpu_mode(self, mode: str, duration_s: float = 0.0) -> None:
        self._set_mode("set_gpu_mode", mode, duration_s)

    def project_detach(self, url: str) -> None:
        reply = self._call(f"<project_detach>\n<project_url>{escape(url)}</project_url>\n</project_detach>",
                           "project_detach")
        self._expect_success(reply, "project_detach")

    def attach_project(self, url: str, account_key: str, name: str = "", wait_s: float = 30.0) -> bool:
        """Attach to a project and wait up to `wait_s` for its first answer.

        True: the project's scheduler answered. False: still trying when
        `wait_s` ran out (the client goes on trying). A failure raises
        BoincAttachError with the client's own words, and the half-made
        attachment is detached again so nothing is left behind.
        """
        canon = canonical_url(url)
        seqno = self.get_message_seqno()
        reply = self._call(
            "<project_attach>\n"
            f"<project_url>{escape(url)}</project_url>\n<authenticator>{escape(account_key)}</authenticator>\n"
            f"<project_name>{escape(name)}</project_name>\n</project_attach>", "project_attach")
        try:
            self._expect_success(reply, "project_attach")
        except BoincRpcError as err:
            raise BoincAttachError(f"attach {canon}: {str(err).split(': ', 1)[-1]}") from None
        deadline = time.monotonic() + wait_s
        while True:  # the attach itself is immediate on 7.x clients; newer ones may report "in progress"
            poll = self._call("<project_attach_poll/>", "project_attach_poll").find("project_attach_reply")
            if poll is None:
                raise BoincGarbage(f"garbage reply to project_attach_poll from {self.address}")
            error = self._number(poll, "error_num", int, 0)
            if error != ERR_IN_PROGRESS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if error:
            words = [" ".join((m.text or "").split()) for m in poll.findall("message")]
            words += [m.body for m in self.get_messages(seqno)]
            what = ATTACH_ERRORS.get(error, f"error {error}")
            raise BoincAttachError(f"attach {canon}: {what}" + (f" ({'; '.join(w for w in words if w)})" if words else ""))
        return self._await_first_contact(canon, seqno, deadline)

    def _await_first_contact(self, canon: str, seqno: int, deadline: float) -> bool:
        failed_at: float | None = None
        while True:
            project = next((p for p in self.get_state().projects if _same_site(p.url, canon)), None)
            messages = self.get_messages(seqno)
            if project is None:
                raise BoincAttachError(f"attach {canon}: the client dropped the project")
            # Until the project's name is known the client files its messages under the URL.
            ours = {project.url, canon} | ({project.name} if project.name else set())
            alerts = [m.body for m in messages if m.priority > MSG_INFO]
            if project.master_fetch_failures or project.nrpc_failures or alerts:
                failed_at = failed_at or time.monotonic()
                # An alert such as "BOINC can't access Internet" may follow the failure by a
                # few seconds (once the client has tried a reference site), or never come.
                if alerts or time.monotonic() - failed_at > 5.0 or time.monotonic() > deadline:
                    what = ("could not fetch the project's scheduler list" if project.master_fetch_failures
                            else "the project's scheduler did not answer" if project.nrpc_failures
                            else "the client raised an alert")
                    said = [m.body for m in messages if m.project in ours or m.priority > MSG_INFO]
                    self._drop(project.url)
                    words = f" (the client says: {'; '.join(said)[:300]})" if said else ""
                    raise BoincAttachError(f"attach {canon}: {what}{words}; not attached")
            elif project.last_rpc_time > 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    def _drop(self, url: str) -> None:
        try:
            self.project_detach(url)
        except BoincRpcError:
            pass  # already gone

    # --- ComputeClient ---
    def modes(self) -> dict[str, ModeState]:
        status = self.get_cc_status()
        return {"cpu": status.run, "gpu": status.gpu}

    def _setter(self, resource: str):
        if resource not in ("cpu", "gpu"):
            raise ValueError(f"resource: expected 'cpu' or 'gpu', got {resource!r}")
        return self.set_run_mode if resource == "cpu" else self.set_gpu_mode

    def hold(self, resource: str, lease_s: float) -> None:
        # Temporary on purpose: the owner's permanent mode is never touched, and if
        # this agent dies the client takes the resource back when the lease ends.
        self._setter(resource)(self.suspended, max(1.0, lease_s))

    def give_back(self, resource: str, owner: ModeState) -> None:
        setter = self._setter(resource)
        if owner.temp_left_s >= 1.0:  # the owner's own snooze, still running
            setter(owner.current, owner.temp_left_s)
            return
        # A permanent set also clears salvage's temporary mode. Twice: the client keeps
        # the mode before each set for its "restore" request, and the second set makes
        # that the owner's mode rather than salvage's "never".
        setter(owner.perm, 0.0)
        setter(owner.perm, 0.0)

    def overview(self) -> Overview:
        state = self.get_state()
        return Overview(projects=[ProjectInfo(p.url, p.name, p.host_total_credit) for p in state.projects],
                        tasks=state.task_counts())
