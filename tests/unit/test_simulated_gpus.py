"""--simulate-gpus: the SPEC forms, their errors, and live values from a file."""
import json

import pytest

from workers.gpus import GpuReader
from workers.simnvml import SimulatedNvml, SpecError, check_spec


def reader(spec: str) -> GpuReader:
    r = GpuReader(SimulatedNvml(spec))
    r.start()
    return r


def test_inline_spec_gives_distinct_gpus():
    gpus = reader("GTX 1060:3GB:6.1,RTX 3060:12GB:8.6").probe()
    assert [(g.index, g.name, g.vram_bytes, g.compute_capability) for g in gpus] == [
        (0, "GTX 1060", 3 * 2**30, "6.1"), (1, "RTX 3060", 12 * 2**30, "8.6")]


def test_empty_spec_is_cpu_only():
    assert reader("").probe() == []


@pytest.mark.parametrize("spec, field", [
    ("GTX 1060:3GB", "simulate-gpus[0]"),
    ("GTX 1060:lots:6.1", "simulate-gpus[0].vram"),
    ("GTX 1060:3GB:six", "simulate-gpus[0].cc"),
    ("RTX 3060:12GB:8.6,:4GB:7.5", "simulate-gpus[1].name"),
    ("@/nonexistent/gpus.json", "simulate-gpus"),
])
def test_malformed_specs_name_the_field(spec, field):
    with pytest.raises(SpecError) as err:
        check_spec(spec)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


@pytest.mark.parametrize("content, field", [
    ("not json", "simulate-gpus"),
    ('{"name": "x"}', "simulate-gpus"),
    ('[{"name": "GTX 1070", "vram": "8GB"}]', "simulate-gpus[0].cc"),
    ('[{"name": "GTX 1070", "vram": "8GB", "cc": "6.1", "utilization": 2}]', "simulate-gpus[0].utilization"),
    ('[{"name": "GTX 1070", "vram": "8GB", "cc": "6.1", "colour": "red"}]', "simulate-gpus[0].colour"),
])
def test_malformed_spec_files_name_the_field(tmp_path, content, field):
    path = tmp_path / "gpus.json"
    path.write_text(content)
    with pytest.raises(SpecError) as err:
        check_spec(f"@{path}")
    assert str(err.value).startswith(field)


def test_a_spec_file_is_reread_at_every_poll(tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([{"name": "GTX 1070", "vram": "8GB", "cc": "6.1"}]))
    r = reader(f"@{path}")
    assert r.sample()[0].temperature_c == 40
    path.write_text(json.dumps([{"name": "GTX 1070", "vram": "8GB", "cc": "6.1", "temperature_c": 92,
                                 "utilization": 0.9, "power_w": 140.5, "fan_ratio": 0.85, "xid_errors": 1}]))
    s = r.sample()[0]
    assert (s.temperature_c, s.utilization, s.power_w, s.fan_ratio) == (92, 0.9, 140.5, 0.85)
    assert s.throttle["sw_thermal"] is True  # as a real card slows down when this hot
    assert r.xid_errors == {0: 1}
    path.write_text(json.dumps([{"name": "GTX 1070", "vram": "8GB", "cc": "6.1", "lost": True}]))
    assert r.sample()[0].lost is True
