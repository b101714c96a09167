"""A PC's speed measurement is kept, so a restart rejoins without measuring again."""
import json

from workers import benchmark
from workers.benchmark import measure_cached

PC = {"cpu": "Test CPU", "python": "/usr/bin/python3", "gpus": []}


def test_a_restart_reuses_the_kept_speed_of_the_same_hardware(tmp_path):
    path = tmp_path / "speed.json"
    first, age = measure_cached([], PC, path)
    assert age is None and first["cpu"] > 0  # measured now
    again, age = measure_cached([], PC, path)
    assert again == first and age is not None and age >= 0  # kept figures, not a new timing


def test_other_hardware_an_old_or_broken_record_is_measured_again(tmp_path, monkeypatch):
    # The real measurement runs above; here each new measurement is counted instead.
    runs = []
    monkeypatch.setattr(benchmark, "run_in_child", lambda gpus: runs.append(gpus) or {"cpu": 50.0 + len(runs)})
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"identity": PC, "at": 0.0, "speeds": {"cpu": 1.0}}))  # 1970: too old
    fresh, age = measure_cached([], PC, path)
    assert age is None and fresh["cpu"] != 1.0
    new_gpu = dict(PC, gpus=[[0, "GTX 1060 3GB", "GPU-1234"]])
    _, age = measure_cached([], new_gpu, path)
    assert age is None
    path.write_text("{not json")
    _, age = measure_cached([], PC, path)
    assert age is None
    assert json.loads(path.read_text())["identity"] == PC  # the broken record was replaced
    assert len(runs) == 3
