"""How long the owner has been away from this PC, as BOINC tells it on Linux:
the newest read of a keyboard, mouse or console device (its access time moves
with input; output, such as the agent's own lines on its terminal, moves only
the modification time), and logind's idle hint where a session manager keeps
one. None when neither can be read: the policy then says so rather than guess."""
from __future__ import annotations

import glob
import os
import subprocess
import time

DEFAULT_DEVICES = ("/dev/input/event*", "/dev/input/mice", "/dev/tty[0-9]*", "/dev/pts/*")


def last_input(devices: tuple[str, ...]) -> float | None:
    """The newest input time (Unix time) among the devices we may stat, or None."""
    newest = None
    for pattern in devices:
        for path in glob.glob(pattern):
            try:
                st = os.stat(path)
            except OSError:
                continue
            newest = st.st_atime if newest is None else max(newest, st.st_atime)
    return newest


def logind_idle_since() -> float | None:
    """When logind's sessions all went idle (Unix time), if a session manager says;
    None where there is no logind (servers, containers) or a session is active."""
    try:
        out = subprocess.run(["loginctl", "show-session", "--property=IdleHint", "--property=IdleSinceHint",
                              "--value", "auto"], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) < 2:
        return None
    if lines[0] != "yes":
        return time.time()  # active now
    return int(lines[1]) / 1e6 if lines[1].isdigit() and int(lines[1]) else None


def idle_seconds(devices: tuple[str, ...], now: float) -> float | None:
    """Seconds since the last owner input, from whichever source knows; None if none does."""
    times = [t for t in (last_input(devices), logind_idle_since()) if t is not None]
    if not times:
        return None
    return max(0.0, now - max(times))
