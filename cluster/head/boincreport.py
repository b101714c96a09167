"""What an agent reports of its PC's BOINC client in each heartbeat: checked
field by field before the head stores or shows it, and summed up in one cell
for `cluster status` and the status page."""
from __future__ import annotations

import math
import re

from workers.boinc.compute import RESOURCES, TASK_STATES
from workers.boinc.manager import HOLD_REASONS
from workers.boinc.metrics import MODES

ATTACH_STATES = ("attaching", "attached", "failed")
MAX_PROJECTS = 64
MAX_ATTACHES = 20
MAX_LINE = 400
ID_RE = re.compile(r"[0-9a-f]{16}")


class ReportError(ValueError):
    """A report that is not what an agent sends; `str()` is the one-line reason."""


def _line(value, where: str) -> str:
    if not isinstance(value, str):
        raise ReportError(f"boinc.{where}: expected a line of text")
    return " ".join(value.split())[:MAX_LINE]


def _modes(value, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not set(value) <= set(RESOURCES) or not set(value.values()) <= set(MODES):
        raise ReportError(f"boinc.{where}: expected resource ({'/'.join(RESOURCES)}) -> mode ({'/'.join(MODES)})")
    return dict(value)


def boinc_report(value) -> dict | None:
    """A heartbeat's BOINC part, checked field by field; None: the agent manages no client."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ReportError("boinc: expected the agent's report of its BOINC client")
    if value.get("kind") != "boinc" or not isinstance(value.get("connected"), bool):
        raise ReportError("boinc: expected kind 'boinc' and connected true or false")
    out = {"kind": "boinc", "connected": value["connected"], "note": _line(value.get("note", ""), "note"),
           "modes": _modes(value.get("modes", {}), "modes"),
           "owner_modes": _modes(value.get("owner_modes", {}), "owner_modes"), "held": {}, "projects": [],
           "tasks": {}, "attaches": {}}
    held = value.get("held", {})
    if not isinstance(held, dict) or not set(held) <= set(RESOURCES):
        raise ReportError("boinc.held: expected resource -> {reason, detail}")
    for resource, hold in held.items():
        if not isinstance(hold, dict) or hold.get("reason") not in HOLD_REASONS:
            raise ReportError(f"boinc.held.{resource}: expected a reason among {', '.join(HOLD_REASONS)}")
        out["held"][resource] = {"reason": hold["reason"], "detail": _line(hold.get("detail", ""), "held.detail")}
    projects = value.get("projects", [])
    if not isinstance(projects, list) or len(projects) > MAX_PROJECTS:
        raise ReportError(f"boinc.projects: expected at most {MAX_PROJECTS} projects")
    for p in projects:
        credit = p.get("credit") if isinstance(p, dict) else None
        if isinstance(credit, bool) or not isinstance(credit, (int, float)) or not math.isfinite(credit) \
                or not 0 <= credit < 1e15:
            raise ReportError("boinc.projects: expected {url, name, credit} with credit a number from 0")
        out["projects"].append({"url": _line(p.get("url"), "projects.url")[:300],
                                "name": _line(p.get("name"), "projects.name")[:100], "credit": float(credit)})
    tasks = value.get("tasks", {})
    if not isinstance(tasks, dict) or not set(tasks) <= set(TASK_STATES) or \
            not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 10**6 for n in tasks.values()):
        raise ReportError(f"boinc.tasks: expected state ({', '.join(TASK_STATES)}) -> count")
    out["tasks"] = dict(tasks)
    attaches = value.get("attaches", {})
    if not isinstance(attaches, dict) or len(attaches) > MAX_ATTACHES:
        raise ReportError(f"boinc.attaches: expected at most {MAX_ATTACHES} request id -> outcome")
    for rid, outcome in attaches.items():
        if not ID_RE.fullmatch(str(rid)) or not isinstance(outcome, dict) or outcome.get("state") not in ATTACH_STATES:
            raise ReportError(f"boinc.attaches: expected request id -> state among {', '.join(ATTACH_STATES)}")
        out["attaches"][rid] = {"state": outcome["state"], "detail": _line(outcome.get("detail", ""), "attaches")}
    return out


def summary(report: dict | None) -> str:
    """One cell for `cluster status` and the page: what the PC's client does now."""
    if report is None:
        return "-"
    if not report["connected"]:
        return f"not reachable: {report['note'] or 'no answer yet'}"
    projects = len(report["projects"])
    line = f"{projects} project{'' if projects == 1 else 's'}, {report['tasks'].get('running', 0)} running"
    held = report["held"]
    for resource in RESOURCES:
        if resource in held:
            line += f"; {resource.upper()} held ({held[resource]['detail'] or held[resource]['reason']})"
    lent = [r.upper() for r in RESOURCES if r not in held and report["modes"].get(r) != "never"]
    return line + (f"; {' and '.join(lent)} lent" if lent else "")
