"""Worker side: run a batch of science tasks and turn each into a Report.

The coordinator calls run_tasks inside one Ray task per batch of ~1000 tasks,
so the loop stays lean: apps are looked up once per batch, not per task.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

from jobs.dutycycle import DutyCycle
from jobs.science.apps.base import Paused
from jobs.science.tasks import Report, Task

MAX_ERROR_TEXT = 200


def run_tasks(
    tasks: Sequence[Task],
    *,
    device: str = "cpu",
    corrupt: bool = False,
    checkpoint_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    apps: Callable[[str], Any] | None = None,
    throttle: DutyCycle | None = None,
) -> list[Report]:
    """Run each task with its app; one Report per task that finished or failed.

    An exception in a task becomes a 'client_error' report with a short
    message; the other tasks still run. When should_stop() turns true (or an
    app raises Paused), the remaining tasks get no report: the caller hands
    them back with ScienceStore.release(). `corrupt` (tests only: a lying
    host) perturbs every successful result so that it disagrees. `throttle`
    (the owner's duty cycle) rests after each task.
    """
    if apps is None:
        from jobs.science.apps import get_app  # the registry; tests inject fakes

        apps = get_app
    found: dict[str, Any] = {}
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random() if corrupt else None
    reports: list[Report] = []
    if throttle is not None:
        throttle.start()
    for task in tasks:
        if should_stop is not None and should_stop():
            break
        if throttle is not None and reports:
            throttle.after_work()
        ckpt = ckpt_dir / f"wu-{task.wu_id}.ckpt" if ckpt_dir is not None else None
        try:
            app = found.get(task.app)
            if app is None:
                app = found[task.app] = apps(task.app)
            if app.version != task.version:
                raise ValueError(f"version: this worker has {task.app} v{app.version}, the task wants v{task.version}")
            result = app.run(task.params, device=device, checkpoint=ckpt, should_stop=should_stop)
        except Paused:
            break  # progress is in the checkpoint; the copy goes back unreported
        except Exception as exc:  # noqa: BLE001 - any failure of one task is that task's client_error
            reports.append(Report(task.result_id, "client_error", _short(exc)))
            continue
        if rng is not None:
            result = perturb(result, rng)
        reports.append(Report(task.result_id, "success", result))
    if ckpt_dir is not None:
        _forget_checkpoints(ckpt_dir, {t.wu_id for t, r in zip(tasks, reports) if r.outcome == "success"})
    return reports


def _forget_checkpoints(ckpt_dir: Path, finished: set[int]) -> None:
    """The finished units' checkpoints go, in one pass over the directory: an unlink per
    unit was nearly half of a small unit's cost. One left behind by a crash before this
    only resumes a finished unit at its end, and the agent removes old ones."""
    for name in os.listdir(ckpt_dir):
        wu = name.removeprefix("wu-").removesuffix(".ckpt")
        if wu.isdigit() and int(wu) in finished:
            (ckpt_dir / name).unlink(missing_ok=True)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_TEXT]


def perturb(value: Any, rng: random.Random) -> Any:
    """A wrong answer shaped like `value`: every number shifted down (an energy
    claimed better than it is), strings altered; a result with neither gets an
    extra field. Random, so two lying hosts do not agree with each other."""
    changed, out = _perturb(value, rng)
    if not changed and isinstance(out, dict):
        out = {**out, "unverified": rng.random()}
    return out


def _perturb(value: Any, rng: random.Random) -> tuple[bool, Any]:
    if isinstance(value, bool):
        return True, not value
    if isinstance(value, int):
        return True, value - 1 - rng.randrange(1000)
    if isinstance(value, float):
        return True, value - 1.0 - rng.random() - abs(value) * 0.1
    if isinstance(value, str):
        return True, value + "?"
    if isinstance(value, list):
        parts = [_perturb(v, rng) for v in value]
        return any(c for c, _ in parts), [v for _, v in parts]
    if isinstance(value, dict):
        parts = {k: _perturb(v, rng) for k, v in value.items()}
        return any(c for c, _ in parts.values()), {k: v for k, (_, v) in parts.items()}
    return False, value
