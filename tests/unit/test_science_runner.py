"""The worker-side runner: tasks in, reports out; failures, pausing, lying hosts."""

from __future__ import annotations

import json
import random

from jobs.science.apps.base import Paused
from jobs.science.runner import perturb, run_tasks
from jobs.science.tasks import Report, Task


class Energy:
    name = "fold"
    version = 2

    def __init__(self):
        self.checkpoints = []

    def run(self, params, *, device="cpu", checkpoint=None, should_stop=None):
        self.checkpoints.append(checkpoint)
        if params["n"] < 0:
            raise RuntimeError("negative chain\nwith a traceback-ish second line")
        if params["n"] == 99:
            raise Paused()
        return {"energy": -params["n"], "fold": "LRU", "device": device}


def tasks(*ns, app="fold", version=2):
    return [Task(i, 100 + i, app, version, json.dumps({"n": n})) for i, n in enumerate(ns)]


def test_each_task_becomes_a_success_report():
    app = Energy()
    reports = run_tasks(tasks(1, 2, 3), device="cuda:1", apps=lambda name: app)
    assert reports == [Report(i, "success", {"energy": -n, "fold": "LRU", "device": "cuda:1"})
                       for i, n in enumerate((1, 2, 3))]


def test_a_failing_task_is_a_short_client_error_and_the_rest_still_run():
    app = Energy()
    reports = run_tasks(tasks(1, -1, 2), apps=lambda name: app)
    assert [r.outcome for r in reports] == ["success", "client_error", "success"]
    assert reports[1].payload == "RuntimeError: negative chain"


def test_unknown_app_or_wrong_version_is_a_client_error():
    def lookup(name):
        if name != "fold":
            raise ValueError(f"app: unknown {name!r}")
        return Energy()

    reports = run_tasks(tasks(1, app="nope") + tasks(1, version=1), apps=lookup)
    assert [r.outcome for r in reports] == ["client_error", "client_error"]
    assert "unknown" in reports[0].payload and "v2" in reports[1].payload


def test_should_stop_and_paused_leave_the_rest_unreported(tmp_path):
    app = Energy()
    reports = run_tasks(tasks(1, 99, 2), apps=lambda name: app, checkpoint_dir=tmp_path)
    assert [r.result_id for r in reports] == [0]
    assert app.checkpoints[1] == tmp_path / "wu-101.ckpt"  # per WU, so a resumed copy finds it
    calls = iter([False, True])
    reports = run_tasks(tasks(1, 2, 3), apps=lambda name: app, should_stop=lambda: next(calls, True))
    assert [r.result_id for r in reports] == [0]


def test_a_finished_units_checkpoint_goes_and_a_paused_ones_stays(tmp_path):
    class Checkpointing(Energy):
        def run(self, params, *, checkpoint=None, **kw):
            checkpoint.write_text("progress")  # every unit writes one while it runs
            return super().run(params, checkpoint=checkpoint, **kw)

    (tmp_path / "wu-7.ckpt").write_text("another unit's, not in this task")
    reports = run_tasks(tasks(1, 2, 99), apps=lambda name: Checkpointing(), checkpoint_dir=tmp_path)
    assert [r.result_id for r in reports] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wu-102.ckpt", "wu-7.ckpt"]


def test_corrupt_mode_lies_on_every_success():
    app = Energy()
    honest = run_tasks(tasks(5, 6), apps=lambda name: app)
    lying = run_tasks(tasks(5, 6), apps=lambda name: app, corrupt=True)
    for h, lie in zip(honest, lying):
        assert lie.outcome == "success" and lie.payload != h.payload
        assert lie.payload["energy"] < h.payload["energy"]  # claims a better (lower) energy


def test_perturb_changes_results_without_numbers_and_liars_disagree():
    assert perturb({}, random.Random(1)) != {}
    assert perturb({"ok": None}, random.Random(1)) != {"ok": None}
    a = perturb({"x": [1.0, 2.0]}, random.Random(1))
    b = perturb({"x": [1.0, 2.0]}, random.Random(2))
    assert a != b
