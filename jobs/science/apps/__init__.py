"""Science apps: the registry of work-unit kinds the BOINC-style server can hand out."""

from __future__ import annotations

from jobs.science.apps.base import (
    App,
    CheckpointError,
    Needs,
    ParamError,
    Paused,
    ResultError,
    UnknownAppError,
)
from jobs.science.apps.hp_fold import HPFold
from jobs.science.apps.lj_md import LJMD
from jobs.science.apps.noop import Noop

APPS: dict[str, App] = {app.name: app for app in (Noop(), LJMD(), HPFold())}


def get_app(name: str) -> App:
    try:
        return APPS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(APPS))
        raise UnknownAppError(f"app: unknown app {name!r} (known: {known})") from None


__all__ = [
    "APPS",
    "App",
    "CheckpointError",
    "Needs",
    "ParamError",
    "Paused",
    "ResultError",
    "UnknownAppError",
    "get_app",
]
