"""Which of this PC's devices salvage's work is using now, told by the work itself.

A task or pool worker marks its device in the directory the agent gives every
task in $SALVAGE_CLAIMS_DIR as it starts, one small file per process and
device; the agent notices a new file within a tenth of a second, checks them
all every second, and lends the devices no file names to the PC's own volunteer
client (BOINC). A released claim leaves a "done-" marker that counts once, so
work shorter than the agent's look still keeps the device from BOINC. A process
that dies without cleaning up (killed, out of memory) releases its claim by
dying: a claim counts only while its process, started at the time the file
says, lives.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import psutil

CLAIMS_DIR_ENV = "SALVAGE_CLAIMS_DIR"
DEVICE_RE = re.compile(r"cpu|gpu[0-9]{1,2}")
FILE_RE = re.compile(r"(?P<done>done-)?(?P<pid>[0-9]+)\.(?P<device>cpu|gpu[0-9]{1,2})")


def _started(pid: int) -> str | None:
    try:
        return repr(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class DeviceClaim:
    """`with DeviceClaim.here("gpu0"): ...` while the work uses that device. With no
    claims directory (a task run outside an agent) it does nothing."""

    def __init__(self, directory: str | None, device: str):
        if not DEVICE_RE.fullmatch(device):
            raise ValueError(f"device: expected cpu or gpuN, got {device!r}")
        self.path = Path(directory) / f"{os.getpid()}.{device}" if directory else None

    @classmethod
    def here(cls, device: str) -> DeviceClaim:
        return cls(os.environ.get(CLAIMS_DIR_ENV), device)

    def take(self) -> DeviceClaim:
        if self.path is not None:
            tmp = self.path.with_name(f".{self.path.name}")
            try:  # in one step: a half-written claim would read as a dead one
                tmp.write_text(_started(os.getpid()) or "")
                os.replace(tmp, self.path)
            except OSError:
                pass  # the agent then does not know; the work itself must not fail for it
        return self

    def release(self) -> None:
        if self.path is not None:
            try:
                os.replace(self.path, self.path.with_name(f"done-{self.path.name}"))
            except OSError:
                pass

    def __enter__(self) -> DeviceClaim:
        return self.take()

    def __exit__(self, *_exc) -> None:
        self.release()


def claim_names(directory: Path) -> frozenset[str]:
    """The live claim files' names only, no process checks: cheap enough to look ten times a second."""
    try:
        return frozenset(e.name for e in os.scandir(directory) if e.name[:1].isdigit())
    except OSError:
        return frozenset()


def claimed(directory: Path) -> set[str]:
    """The devices claimed by living processes; claims of dead ones are removed."""
    out: set[str] = set()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return out
    for entry in entries:
        m = FILE_RE.fullmatch(entry.name)
        if m is None:
            continue
        if m["done"]:  # work that ended since the last look: busy once more
            out.add(m["device"])
            try:
                os.unlink(entry.path)
            except OSError:
                pass
            continue
        try:
            stamp = Path(entry.path).read_text()
        except OSError:
            continue  # released while we looked
        started = _started(int(m["pid"]))
        if started is not None and started == stamp:
            out.add(m["device"])
        else:
            try:
                os.unlink(entry.path)
            except OSError:
                pass
    return out
