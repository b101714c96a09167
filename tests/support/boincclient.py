"""A private instance of Debian's real BOINC client (7.20) for tests and benchmarks.

How it is started, and why (each checked against boinc 7.20.5):
  --dir D               its own data dir; the client chdirs into it, so client_state.xml,
                        its lockfile and slots/ land there and nothing in the cwd.
  --gui_rpc_port P      its own port (a free one); with no remote_hosts.cfg in D it
                        listens on 127.0.0.1 only.
  --no_gpus             skips GPU detection (a helper child loading vendor libraries);
                        the GPU *mode* RPCs work the same on a PC without GPUs.
  --no_info_fetch       no download of the project list or newest version (no network).
  --skip_cpu_benchmarks no minute of benchmarks on 2 shared cores.
  D/gui_rpc_auth.cfg    written before start (else the client makes a random password).
  D/cc_config.xml       dont_contact_ref_site: after a failed project fetch the client
                        would otherwise test a public reference site; tests stay on loopback.
Not needed: --allow_multiple_clients (the "another instance" lock is the lockfile in the
data dir, so a private --dir runs beside the PC's own client), --daemon (it would fork
away from the process teardown must end). The client is ready when its GUI RPC answers
(under 2 s here) and exits within about a second of SIGTERM.
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from workers.boinc import BoincRpc

BOINC = shutil.which("boinc")
PASSWORD = "salvage-test-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RealClient:
    data_dir: Path
    port: int
    password: str = PASSWORD
    proc: subprocess.Popen | None = None

    @property
    def password_file(self) -> Path:
        return self.data_dir / "gui_rpc_auth.cfg"

    def start(self) -> RealClient:
        if BOINC is None:
            raise RuntimeError("needs the real BOINC client: apt-get install boinc-client")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(self.password + "\n")
        (self.data_dir / "cc_config.xml").write_text(
            "<cc_config><options><dont_contact_ref_site>1</dont_contact_ref_site></options></cc_config>\n")
        with open(self.data_dir / "client.log", "ab") as log:
            self.proc = subprocess.Popen(
                [BOINC, "--dir", str(self.data_dir), "--gui_rpc_port", str(self.port),
                 "--no_gpus", "--no_info_fetch", "--skip_cpu_benchmarks"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"boinc exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                BoincRpc(port=self.port, password=self.password, timeout_s=1).get_cc_status()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"boinc's GUI RPC did not come up: {self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self) -> str:
        path = self.data_dir / "client.log"
        return " | ".join(path.read_text(errors="replace").splitlines()[-3:]) if path.exists() else ""

    def rpc(self, **kw) -> BoincRpc:
        return BoincRpc(port=self.port, password=kw.pop("password", self.password), **kw)
