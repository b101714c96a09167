"""workers/boinc against Debian's real BOINC client (7.20), started privately
(tests/support/boincclient.py says how, and why each flag)."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from boincclient import BOINC, RealClient, free_port
from prometheus_client import CollectorRegistry, generate_latest

from workers.boinc import (
    BoincAttachError,
    BoincCollector,
    BoincManager,
    BoincRpc,
    BoincStatus,
    Hold,
    ModeState,
    ProjectInfo,
)
from workers.boinc.compute import TASK_STATES

pytestmark = pytest.mark.skipif(BOINC is None, reason="needs the real BOINC client: apt-get install boinc-client")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    real = RealClient(tmp_path_factory.mktemp("boinc"), free_port())
    real.start()
    yield real
    real.stop()
    assert real.proc.poll() is not None, "the BOINC client outlived its fixture"


@pytest.fixture
def rpc(client):
    """An observer connection; each test starts from the owner's modes at auto and leaves them so."""
    observer = client.rpc()
    yield observer
    observer.set_run_mode("auto")
    observer.set_gpu_mode("auto")
    observer.close()


def one_line(note: str) -> bool:
    return bool(note) and "\n" not in note


def test_reads_the_real_clients_state(rpc):
    state = rpc.get_state()
    assert state.projects == [] and state.tasks == []
    assert state.task_counts() == dict.fromkeys(TASK_STATES, 0)
    status = rpc.get_cc_status()
    # A fresh client runs "according to preferences", permanently.
    assert status.run == ModeState("auto", "auto", 0.0)
    assert status.gpu == ModeState("auto", "auto", 0.0)
    rpc.set_gpu_mode("never", 300)
    gpu = rpc.get_cc_status().gpu
    assert (gpu.current, gpu.perm) == ("never", "auto") and 290 < gpu.temp_left_s <= 300


def test_gpu_work_holds_the_gpu_until_idle_then_the_owners_mode_returns(client, rpc):
    rpc.set_gpu_mode("always")  # the owner's own choice, so "back" is not just the default
    manager = BoincManager(client.rpc(), idle_s=60)
    manager.update({"cpu": False, "gpu0": True}, now=1000.0)
    gpu = rpc.get_cc_status().gpu
    assert (gpu.current, gpu.perm) == ("never", "always")  # what the real client reports
    assert rpc.get_cc_status().run.current == "auto"  # GPU work leaves the CPU to BOINC
    status = manager.status()
    assert status.connected and status.note == ""
    assert status.held == {"gpu": Hold("never", "work", "gpu0 busy")}
    manager.update({"cpu": False, "gpu0": False}, now=1059.0)  # idle, but not long enough
    assert rpc.get_cc_status().gpu.current == "never"
    manager.update({"cpu": False, "gpu0": False}, now=1060.5)
    assert rpc.get_cc_status().gpu == ModeState("always", "always", 0.0)
    assert manager.status().held == {} and manager.status().holds_total["gpu"] == 1


def test_cpu_work_holds_the_run_mode(client, rpc):
    manager = BoincManager(client.rpc(), idle_s=5)
    manager.update({"cpu": True, "gpu0": False}, now=0.0)
    status = rpc.get_cc_status()
    assert status.run.current == "never" and status.gpu.current == "auto"
    manager.update({"cpu": False}, now=6.0)
    assert rpc.get_cc_status().run == ModeState("auto", "auto", 0.0)


def test_stop_restores_the_owners_modes_exactly(client, rpc):
    rpc.set_gpu_mode("always")
    rpc.set_run_mode("never", 600)  # the owner snoozed BOINC's CPU work for 10 minutes
    manager = BoincManager(client.rpc(), idle_s=60)
    manager.update({"cpu": True, "gpu0": True}, now=0.0)
    assert rpc.get_cc_status().gpu.current == "never"
    manager.stop()
    status = rpc.get_cc_status()
    assert status.gpu == ModeState("always", "always", 0.0)
    assert (status.run.current, status.run.perm) == ("never", "auto") and 590 < status.run.temp_left_s <= 600
    manager.update({"gpu0": True}, now=1.0)  # a stopped manager touches nothing
    assert rpc.get_cc_status().gpu.current == "always"


def test_a_mode_the_owner_sets_by_hand_becomes_the_one_restored(client, rpc):
    manager = BoincManager(client.rpc(), idle_s=10)
    manager.update({"gpu0": True}, now=0.0)
    rpc.set_gpu_mode("always")  # by hand, in the BOINC Manager, while salvage holds the GPU
    manager.update({"gpu0": True}, now=1.0)
    gpu = rpc.get_cc_status().gpu
    assert (gpu.current, gpu.perm) == ("never", "always")  # still held for salvage's work
    assert manager.status().owner_modes["gpu"].perm == "always"
    manager.update({"gpu0": False}, now=12.0)
    assert rpc.get_cc_status().gpu == ModeState("always", "always", 0.0)


def test_an_owners_snooze_while_held_is_restored_with_its_time_left(client, rpc):
    manager = BoincManager(client.rpc(), idle_s=10)
    manager.update({"gpu0": True}, now=0.0)
    rpc.set_gpu_mode("never", 900)  # the owner presses "snooze GPU" while salvage holds it
    manager.update({"gpu0": True}, now=1.0)
    manager.update({"gpu0": False}, now=12.0)
    gpu = rpc.get_cc_status().gpu
    assert (gpu.current, gpu.perm) == ("never", "auto") and 880 < gpu.temp_left_s <= 900
    assert manager.status().held == {}


def test_odd_input_from_the_agent_is_a_note_not_a_crash(client, rpc):
    manager = BoincManager(client.rpc())
    manager.update({"gpu0": True, 7: True, "npu0": True})  # type: ignore[dict-item]
    assert manager.status().note == "" and rpc.get_cc_status().gpu.current == "never"
    manager.update(None)  # type: ignore[arg-type]
    assert one_line(manager.status().note) and "internal error" in manager.status().note
    manager.stop()
    assert rpc.get_cc_status().gpu.current == "auto"


def test_pause_holds_everything_and_resume_gives_it_back_after_idle(client, rpc):
    manager = BoincManager(client.rpc(), idle_s=5)
    manager.pause("GPU above 83 °C", now=0.0)
    status = rpc.get_cc_status()
    assert status.run.current == "never" and status.gpu.current == "never"
    assert manager.status().held["gpu"] == Hold("never", "paused", "paused: GPU above 83 °C")
    manager.resume(now=10.0)
    assert rpc.get_cc_status().gpu.current == "never"  # idle only from the resume on
    manager.update({}, now=15.5)
    status = rpc.get_cc_status()
    assert status.run.current == "auto" and status.gpu.current == "auto"


def test_a_hold_left_behind_ends_by_itself(client, rpc):
    """An agent that dies without stop(): the client takes the GPU back when the lease ends."""
    manager = BoincManager(client.rpc(), lease_s=2.0)
    manager.update({"gpu0": True})
    assert rpc.get_cc_status().gpu.current == "never"
    time.sleep(3.5)
    assert rpc.get_cc_status().gpu == ModeState("auto", "auto", 0.0)


def test_a_hold_is_renewed_while_the_work_lasts(client, rpc):
    manager = BoincManager(client.rpc(), lease_s=4.0)
    manager.update({"gpu0": True})
    time.sleep(2.5)  # under half the lease left: this poll renews it
    manager.update({"gpu0": True})
    time.sleep(2.0)  # past the first lease's end
    gpu = rpc.get_cc_status().gpu
    assert gpu.current == "never" and gpu.temp_left_s > 1.0


def test_a_wrong_password_is_a_note_and_nothing_changes(client, rpc, tmp_path):
    manager = BoincManager(client.rpc(password="not-it"))
    manager.update({"gpu0": True})  # must not raise
    status = manager.status()
    assert not status.connected
    assert status.note == f"the BOINC client at 127.0.0.1:{client.port} refused the GUI RPC password (the given password)"
    assert rpc.get_cc_status().gpu.current == "auto"
    missing = BoincManager(BoincRpc(port=client.port, password_file=tmp_path / "nope.cfg"))
    missing.update({"gpu0": True})
    assert missing.status().note == f"no GUI RPC password file at {tmp_path / 'nope.cfg'}"


def test_a_stopped_client_is_a_note_and_the_manager_carries_on(tmp_path):
    other = RealClient(tmp_path / "other", free_port())
    other.start()
    try:
        manager = BoincManager(other.rpc(), idle_s=60)
        manager.update({"gpu0": True}, now=0.0)
        assert manager.status().connected
        other.stop()
        manager.update({"gpu0": True}, now=1.0)  # must not raise
        status = manager.status()
        assert not status.connected
        assert status.note == f"no BOINC client answers at 127.0.0.1:{other.port} (connection refused)"
        other.start()  # same dir and port: the owner restarted BOINC
        manager.update({"gpu0": True}, now=2.0)
        assert manager.status().connected and manager.status().note == ""
        assert other.rpc().get_cc_status().gpu.current == "never"  # held again
    finally:
        other.stop()
    assert other.proc.poll() is not None


class FakeServer:
    """Listens on loopback and answers every request the same wrong way."""

    def __init__(self, reply: bytes | None, hang_up: bool = False):
        self.reply = reply
        self.hang_up = hang_up
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            if self.hang_up:
                conn.close()
                return
            buf = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\x03" in buf:
                    _, buf = buf.split(b"\x03", 1)
                    if self.reply is not None:
                        conn.sendall(self.reply)
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


CC_STATUS_BAD_MODE = (b"<boinc_gui_rpc_reply><cc_status><task_mode>2</task_mode><task_mode_perm>2</task_mode_perm>"
                      b"<gpu_mode>9</gpu_mode><gpu_mode_perm>2</gpu_mode_perm><network_mode>2</network_mode>"
                      b"<network_mode_perm>2</network_mode_perm></cc_status></boinc_gui_rpc_reply>\x03")


@pytest.mark.parametrize("reply, hang_up, expected", [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n\x03", False, "not XML"),
    (b"<html><body>hello</body></html>\x03", False, "is not a GUI RPC reply"),
    (b"<boinc_gui_rpc_reply><status>0</status></boinc_gui_rpc_reply>\x03", False, "no <cc_status>"),
    (CC_STATUS_BAD_MODE, False, "<gpu_mode> is 9"),
    (bytes(range(3, 256)), False, "not XML"),  # 0x03 first: an empty reply
    (None, False, "did not answer"),
    (None, True, "dropped the connection"),
], ids=["http", "html", "no-status", "bad-mode", "binary", "silent", "hang-up"])
def test_garbage_replies_are_a_note(reply, hang_up, expected):
    server = FakeServer(reply, hang_up)
    try:
        manager = BoincManager(BoincRpc(port=server.port, password="", timeout_s=0.5))
        manager.update({"gpu0": True})  # must not raise
        status = manager.status()
        assert not status.connected and one_line(status.note)
        assert expected in status.note and "internal error" not in status.note
        with_password = BoincManager(BoincRpc(port=server.port, password="pw", timeout_s=0.5))
        with_password.update({"gpu0": True})  # the garbage comes back to auth1 instead
        assert one_line(with_password.status().note) and not with_password.status().connected
    finally:
        server.close()


def test_attach_without_network_is_the_clients_error_in_one_line(client, rpc):
    # A project server that is not there (a closed port on loopback): what a PC with no
    # network sees, without the test reaching beyond this machine.
    url = f"http://127.0.0.1:{free_port()}/salvage-test/"
    with pytest.raises(BoincAttachError) as err:
        rpc.attach_project(url, "0123456789abcdef", wait_s=30)
    message = str(err.value)
    assert one_line(message)
    assert message.startswith(f"attach {url}: could not fetch the project's scheduler list")
    assert "not attached" in message
    assert rpc.get_state().projects == []  # nothing left behind
    with pytest.raises(BoincAttachError, match=r"^attach http://not a url/: invalid URL \(Invalid URL"):
        rpc.attach_project("not a url", "0123456789abcdef")


def test_the_collector_renders_the_real_clients_state(client, rpc):
    url = f"http://127.0.0.1:{free_port()}/pending/"
    assert rpc.attach_project(url, "0123456789abcdef", wait_s=0) is False  # accepted, still trying
    try:
        manager = BoincManager(client.rpc(), overview_every_s=0)
        manager.update({"gpu0": True})
        registry = CollectorRegistry()
        registry.register(BoincCollector(manager))
        text = generate_latest(registry).decode()
    finally:
        rpc.project_detach(url)
    lines = set(text.splitlines())
    assert "salvage_boinc_up 1.0" in lines
    assert 'salvage_boinc_mode{mode="never",resource="gpu"} 1.0' in lines
    assert 'salvage_boinc_mode{mode="auto",resource="cpu"} 1.0' in lines
    assert 'salvage_boinc_owner_mode{mode="auto",resource="gpu"} 1.0' in lines
    assert 'salvage_boinc_held{reason="work",resource="gpu"} 1.0' in lines
    assert 'salvage_boinc_held{reason="work",resource="cpu"} 0.0' in lines
    assert 'salvage_boinc_holds_total{resource="gpu"} 1.0' in lines
    assert 'salvage_boinc_tasks{state="running"} 0.0' in lines
    assert f'salvage_boinc_project_info{{name="",project_url="{url}"}} 1.0' in lines
    assert f'salvage_boinc_project_host_credit_total{{project_url="{url}"}} 0.0' in lines


def test_the_collector_renders_credit_and_a_lost_client():
    status = BoincStatus(kind="boinc", connected=False, note="no BOINC client answers at 127.0.0.1:31416",
                         projects=[ProjectInfo("https://einstein.phys.uwm.edu/", "Einstein@Home", 12345.5)],
                         holds_total={"cpu": 2, "gpu": 7})

    class Source:
        def status(self) -> BoincStatus:
            return status

    registry = CollectorRegistry()
    registry.register(BoincCollector(Source()))
    lines = set(generate_latest(registry).decode().splitlines())
    assert "salvage_boinc_up 0.0" in lines
    assert 'salvage_boinc_project_host_credit_total{project_url="https://einstein.phys.uwm.edu/"} 12345.5' in lines
    assert 'salvage_boinc_holds_total{resource="gpu"} 7.0' in lines
    assert not any(line.startswith("salvage_boinc_mode{") for line in lines)  # unknown, not made up
