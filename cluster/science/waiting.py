"""Why a batch's work units wait, one line per reason, from what the head knows:
the batch's queue (copies not yet sent, the quorum they need, the app's needs)
and the PCs alive now as science sees them. Pure functions over plain records,
so every situation can be tested without a cluster; the dispatcher builds the
host views and the API adds the lines to a batch's status."""
from __future__ import annotations

from dataclasses import dataclass

from jobs.science.apps.base import Needs

NTH = {2: "second", 3: "third", 4: "fourth", 5: "fifth"}
NAMED_HOSTS = 4  # a line names at most this many PCs, then counts the rest


@dataclass(frozen=True)
class GpuView:
    index: int
    name: str
    vram_bytes: int
    compute_capability: float
    blocked: str | None = None  # why it takes no work now (lost, paused, hot, unhealthy, ...)


@dataclass(frozen=True)
class HostView:
    """An alive PC as science sees it."""

    name: str
    machine: str  # the physical PC: names on one machine count once in a quorum
    gpus: tuple[GpuView, ...] = ()
    blocked: str | None = None  # why the PC takes no science now (paused, drained, unhealthy, ...)
    training: bool = False  # training comes first: a PC that trains takes no science


@dataclass(frozen=True)
class Queue:
    """What of a batch waits to be sent."""

    unsent: int  # copies not sent yet
    quorum: int  # agreeing results, on distinct machines, each waiting unit needs
    needs: Needs
    done: bool = False


def why_waiting(queue: Queue, hosts: list[HostView]) -> list[str]:
    """Why the batch's unsent copies wait, most telling reason first; empty when
    nothing waits. `hosts`: the PCs alive now."""
    if queue.done or queue.unsent <= 0:
        return []
    if not hosts:
        return ["no PC is alive: join one with `salvage worker join HEAD:PORT`"]
    able = [h for h in hosts if _fits(queue.needs, h.gpus, usable_only=False)]
    if not able:
        return [f"waiting for {_gpu_wanted(queue.needs)}: " + _named([_hardware(h) for h in hosts])]
    busy: dict[str, str] = {}
    free: list[HostView] = []
    for host in able:
        why = _not_free(queue.needs, host)
        if why is None:
            free.append(host)
        else:
            busy[host.name] = why
    others = [f"{name}: {why}" for name, why in busy.items()]
    if not free:
        if all(why == "training" for why in busy.values()):
            return ["all hosts busy with training"]
        return ["no host free for science: " + _named([f"{name} {why}" for name, why in busy.items()])]
    machines = len({h.machine for h in free})
    if machines < queue.quorum:
        on = "" if machines == len(free) else f", on {_count(machines, 'machine')}"
        return [f"needs {_more(machines, queue.quorum)} for quorum {queue.quorum} "
                f"({_count(len(free), 'host')} free for science{on})", *others]
    return [f"queued for the {_count(len(free), 'host')} free for science (oldest batch first)", *others]


def _fits(needs: Needs, gpus: tuple[GpuView, ...], usable_only: bool) -> bool:
    if not needs.gpu:
        return True  # CPU apps, and GPU-capable ones, run on any PC
    return any(g.vram_bytes >= needs.min_vram_bytes and g.compute_capability >= needs.min_compute_capability
               and (g.blocked is None or not usable_only) for g in gpus)


def _not_free(needs: Needs, host: HostView) -> str | None:
    """Why a PC whose hardware fits takes none of these units now, or None."""
    if host.training:
        return "training"
    if host.blocked:
        return host.blocked
    if not _fits(needs, host.gpus, usable_only=True):
        return "; ".join(g.blocked for g in host.gpus if g.blocked)
    return None


def _gpu_wanted(needs: Needs) -> str:
    wants = []
    if needs.min_compute_capability:
        wants.append(f"cc ≥ {needs.min_compute_capability:g}")
    if needs.min_vram_bytes:
        wants.append(f"≥ {needs.min_vram_bytes / 2**20:.0f} MiB")
    return "a GPU" + (f" with {' and '.join(wants)}" if wants else "")


def _hardware(host: HostView) -> str:
    if not host.gpus:
        return f"{host.name} is CPU-only"
    cards = ", ".join(f"{g.name} (cc {g.compute_capability:g}, {g.vram_bytes / 2**20:.0f} MiB)" for g in host.gpus)
    return f"{host.name} has {cards}"


def _named(items: list[str]) -> str:
    shown = items[:NAMED_HOSTS]
    rest = len(items) - len(shown)
    return "; ".join(shown) + (f"; and {rest} more" if rest else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _more(have: int, need: int) -> str:
    if need - have == 1:
        return f"a {NTH.get(need, f'{need}th')} host"
    return f"{need - have} more hosts"
