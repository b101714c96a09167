"""The BOINC client's state on the agent's /metrics, from the manager's snapshot.

Labels stay bounded: resources and modes are fixed sets, task states are
compute.TASK_STATES, and a project URL is one of the few an owner attaches.
"""
from __future__ import annotations

from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .compute import RESOURCES, TASK_STATES
from .manager import HOLD_REASONS, BoincStatus

MODES = ("always", "auto", "never")


class StatusSource(Protocol):
    def status(self) -> BoincStatus: ...


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"salvage_boinc_{name}", doc, labels=labels or [])


class BoincCollector:
    """Register in the agent's registry: `registry.register(BoincCollector(manager))`."""

    def __init__(self, source: StatusSource):
        self.source = source

    def describe(self):
        return []  # no registration-time collect: the client may not have been asked yet

    def collect(self):
        s = self.source.status()
        up = _gauge("up", "1 when the last exchange with the PC's BOINC client worked.")
        up.add_metric([], 1.0 if s.connected else 0.0)
        yield up
        mode = _gauge("mode", "The client's mode in effect per resource, one-hot.", ["resource", "mode"])
        owner = _gauge("owner_mode", "The mode the owner set per resource (salvage restores it), one-hot.",
                       ["resource", "mode"])
        for resource in RESOURCES:
            now = s.modes.get(resource)
            if now is not None:  # unknown while the client cannot be reached
                for m in MODES:
                    mode.add_metric([resource, m], 1.0 if now == m else 0.0)
            own = s.owner_modes.get(resource)
            if own is not None:
                shown = own.current if own.temp_left_s > 0 else own.perm
                for m in MODES:
                    owner.add_metric([resource, m], 1.0 if shown == m else 0.0)
        yield mode
        yield owner
        held = _gauge("held", "1 while salvage keeps the client off this resource, by reason.",
                      ["resource", "reason"])
        holds = CounterMetricFamily("salvage_boinc_holds", "Times salvage took this resource from the client.",
                                    labels=["resource"])
        for resource in RESOURCES:
            hold = s.held.get(resource)
            for reason in HOLD_REASONS:
                held.add_metric([resource, reason], 1.0 if hold is not None and hold.reason == reason else 0.0)
            holds.add_metric([resource], s.holds_total.get(resource, 0))
        yield held
        yield holds
        tasks = _gauge("tasks", "The client's tasks by state.", ["state"])
        if s.connected or s.tasks:
            for state in TASK_STATES:
                tasks.add_metric([state], s.tasks.get(state, 0))
        yield tasks
        info = _gauge("project_info", "A project the client is attached to.", ["project_url", "name"])
        credit = CounterMetricFamily("salvage_boinc_project_host_credit",
                                     "Credit this host has earned at the project (cobblestones).",
                                     labels=["project_url"])
        for p in s.projects:
            info.add_metric([p.url, p.name], 1.0)
            credit.add_metric([p.url], p.host_total_credit)
        yield info
        yield credit
