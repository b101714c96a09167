"""What the agent reads of its work's device claims (workers/tasks/claims.py)."""
import os
import signal
import subprocess
import sys

from workers.tasks.claims import DeviceClaim, claimed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_held_claim_counts_until_released_and_then_once_more(tmp_path):
    claim = DeviceClaim(str(tmp_path), "gpu0").take()
    assert claimed(tmp_path) == {"gpu0"}
    assert claimed(tmp_path) == {"gpu0"}  # as long as it is held
    claim.release()
    # Work shorter than the agent's look between two reads still counts, once.
    assert claimed(tmp_path) == {"gpu0"}
    assert claimed(tmp_path) == set()


def test_the_claim_of_a_killed_process_is_dropped(tmp_path):
    code = ("import sys, time; from workers.tasks.claims import DeviceClaim; "
            "DeviceClaim(sys.argv[1], 'cpu').take(); print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert child.stdout.readline().strip() == "held"
        assert claimed(tmp_path) == {"cpu"}
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert claimed(tmp_path) == set()
    assert list(tmp_path.iterdir()) == []  # and its file is gone


def test_a_claim_whose_pid_now_belongs_to_another_process_is_dropped(tmp_path):
    (tmp_path / f"{os.getpid()}.gpu1").write_text("12345.0")  # this pid, started at another time
    assert claimed(tmp_path) == set()


def test_outside_an_agent_a_claim_does_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("SALVAGE_CLAIMS_DIR", raising=False)
    with DeviceClaim.here("cpu") as claim:
        assert claim.path is None
    monkeypatch.setenv("SALVAGE_CLAIMS_DIR", str(tmp_path))
    with DeviceClaim.here("gpu2"):
        assert claimed(tmp_path) == {"gpu2"}


def test_the_agent_wakes_before_its_tick_when_work_claims_a_device(tmp_path):
    """BOINC must yield within the agent's short look, not at its next full tick."""
    import threading
    import time
    from types import SimpleNamespace

    from workers.agent import Agent

    DeviceClaim(str(tmp_path), "cpu").take().release()  # an old marker is not new work
    agent = SimpleNamespace(boinc=object(), _stop=threading.Event(), claims_dir=tmp_path)
    threading.Timer(0.3, lambda: DeviceClaim(str(tmp_path), "gpu0").take()).start()
    started = time.monotonic()
    Agent.wait_tick(agent, 30.0)
    assert time.monotonic() - started < 10.0  # woke for the claim, a third of the tick at most
    assert claimed(tmp_path) >= {"gpu0"}
