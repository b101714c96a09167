"""The lock that serialises `ray start` on a machine is shared by every user that runs Ray there."""
import os
import subprocess
import sys

from workers import raynode


def test_the_start_lock_is_readable_by_all_even_under_a_private_umask(tmp_path, monkeypatch):
    monkeypatch.setattr(raynode.tempfile, "gettempdir", lambda: str(tmp_path))
    old = os.umask(0o077)  # the agent's and the head's umask
    try:
        with raynode.start_lock():
            pass
    finally:
        os.umask(old)
    # The head's service user, an admin's `salvage demo`: anyone can open it to lock it.
    assert (tmp_path / "salvage-ray-start.lock").stat().st_mode & 0o777 == 0o644


def test_the_start_lock_excludes_a_second_process(tmp_path, monkeypatch):
    monkeypatch.setattr(raynode.tempfile, "gettempdir", lambda: str(tmp_path))
    code = ("import sys, tempfile; from workers import raynode; tempfile.gettempdir = lambda: sys.argv[1]\n"
            "import fcntl, os\nfd = os.open(sys.argv[1] + '/salvage-ray-start.lock', os.O_RDONLY)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    print('held')")
    with raynode.start_lock():
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == "held", out.stderr
