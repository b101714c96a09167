"""Science apps: registry, noop, lj-md (Lennard-Jones HMC/MD) and hp-fold (2D HP folding)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from jobs.science.apps import (
    APPS,
    CheckpointError,
    ParamError,
    Paused,
    ResultError,
    UnknownAppError,
    get_app,
    lj_physics,
)
from jobs.science.apps.lj_md import nve_energies

torch.set_num_threads(1)

LJ = get_app("lj-md")
HP = get_app("hp-fold")
NOOP = get_app("noop")
# a short liquid run: NIST SRSW T*=0.9, rho*=0.776: U/N = -5.4689, P* = 0.24056
DENSE = {"temperature": 0.9, "density": 0.776, "steps": 1500, "equilibration_steps": 800}


def test_get_app_unknown_name_lists_known_apps():
    with pytest.raises(UnknownAppError, match=r"^app: unknown app 'x' \(known: hp-fold, lj-md, noop\)$"):
        get_app("x")
    assert sorted(APPS) == ["hp-fold", "lj-md", "noop"]
    assert get_app("lj-md").needs.gpu_capable and not get_app("hp-fold").needs.gpu


@pytest.mark.parametrize(
    ("app", "params", "field"),
    [
        ("lj-md", {"density": 0.8}, "temperature"),
        ("lj-md", {"temperature": 0.9, "density": -1}, "density"),
        ("lj-md", {"temperature": 0.9, "density": 0.8, "steps": "many"}, "steps"),
        ("lj-md", {"temperature": 0.9, "density": 0.8, "n_particles": 40}, "n_particles"),
        ("lj-md", {"temperature": 0.9, "density": 0.8, "colour": 1}, "colour"),
        ("hp-fold", {"sequence": "HPXH"}, "sequence"),
        ("hp-fold", {"sequence": ""}, "sequence"),
        ("hp-fold", {"sequence": "HPPH", "sweeps": 0}, "sweeps"),
        ("noop", {"x": 1.5}, "x"),
        ("noop", {}, "x"),
    ],
)
def test_bad_params_give_one_line_error_naming_the_field(app, params, field):
    with pytest.raises(ParamError) as info:
        get_app(app).validate_params(params)
    message = str(info.value)
    assert message.startswith(f"{field}:") and "\n" not in message


def test_validate_params_fills_defaults_and_is_idempotent():
    p = LJ.validate_params({"temperature": 0.9, "density": 0.776})
    assert p["n_particles"] == 500 and p["seed"] == 0 and p["steps"] > 0
    assert LJ.validate_params(p) == p
    assert HP.validate_params({"sequence": "hpph"})["sequence"] == "HPPH"
    assert set(LJ.params_schema()) == set(p)
    assert LJ.flops(p) > HP.flops({"sequence": "HPPH"}) > 0


def test_noop_echoes_and_compares_exactly():
    result = NOOP.run({"x": 7})
    assert result == {"y": 7}
    NOOP.check_result(result)
    assert NOOP.compare(result, {"y": 7}) and not NOOP.compare(result, {"y": 8})
    assert len(json.dumps(result)) <= NOOP.max_result_bytes
    with pytest.raises(ResultError, match="^y:"):
        NOOP.check_result({"y": "7"})


def test_tail_corrections_match_numerical_integrals():
    rho, rc = 0.8, 3.0
    r = np.linspace(rc, 200.0, 2_000_001)
    u = 4 * (r**-12 - r**-6)
    du = 4 * (-12 * r**-13 + 6 * r**-7)
    u_tail = 2 * math.pi * rho * np.trapezoid(u * r**2, r)
    p_tail = -2 * math.pi / 3 * rho**2 * np.trapezoid(du * r**3, r)
    assert lj_physics.tail_energy_per_particle(rho, rc) == pytest.approx(u_tail, rel=1e-5)
    assert lj_physics.tail_pressure(rho, rc) == pytest.approx(p_tail, rel=1e-5)


def test_pair_list_finds_exactly_the_close_pairs_with_and_without_cells():
    gen = torch.Generator().manual_seed(1)
    for density, replicas in ((0.003, 3), (0.8, 2)):
        box = (500 / density) ** (1 / 3)
        x = torch.rand(500 * replicas, 3, generator=gen, dtype=torch.float64) * 3 * box - box  # unwrapped
        pairs = lj_physics.build_pairs(x, replicas, box, 4.0)
        found = {(min(a, b), max(a, b)) for a, b in zip(pairs.i.tolist(), pairs.j.tolist())}
        expected = set()
        for rep in range(replicas):
            xs = x[rep * 500 : (rep + 1) * 500]
            d = xs[:, None] - xs[None]
            d -= box * torch.round(d / box)
            close = torch.triu((d.square().sum(-1) < 16.0), diagonal=1).nonzero()
            expected |= {(a + rep * 500, b + rep * 500) for a, b in close.tolist()}
        assert found == expected and len(found) == pairs.i.numel()


def test_velocity_verlet_conserves_energy_without_thermostat():
    coarse = nve_energies({"temperature": 0.9, "density": 0.776, "dt": 0.01}, 150)
    fine = nve_energies({"temperature": 0.9, "density": 0.776, "dt": 0.005}, 300)
    spread_coarse = max(coarse) - min(coarse)
    spread_fine = max(fine) - min(fine)
    assert spread_fine < 2e-3  # per particle, out of |E/N| ~ 4.7
    assert 2.5 < spread_coarse / spread_fine < 6  # second-order integrator: error ~ dt^2


@pytest.fixture(scope="module")
def dense_run():
    return LJ.run({**DENSE, "seed": 1})


def test_short_dense_run_is_finite_and_near_nist(dense_run):
    LJ.check_result(dense_run)
    assert LJ.verify(DENSE, dense_run)
    assert dense_run["energy_per_particle"] == pytest.approx(-5.4689, abs=0.05)
    assert dense_run["pressure"] == pytest.approx(0.24056, abs=0.3)
    assert 0 < dense_run["energy_stderr"] < 0.05 and 0 < dense_run["pressure_stderr"] < 0.3
    assert 0.5 < dense_run["acceptance"] <= 1.0
    assert len(json.dumps(dense_run)) <= LJ.max_result_bytes


def test_compare_accepts_another_seed_and_rejects_a_forged_value(dense_run):
    other = LJ.run({**DENSE, "seed": 2})
    assert other["energy_per_particle"] != dense_run["energy_per_particle"]
    assert LJ.compare(dense_run, other)
    forged = {**other, "energy_per_particle": other["energy_per_particle"] + 0.2}
    assert not LJ.compare(dense_run, forged)
    forged = {**other, "pressure": other["pressure"] - 1.0}
    assert not LJ.compare(dense_run, forged)


def test_verify_and_check_result_reject_broken_lj_results(dense_run):
    assert not LJ.verify(DENSE, {**dense_run, "pressure": float("nan")})
    assert not LJ.verify(DENSE, {**dense_run, "energy_stderr": -1.0})
    with pytest.raises(ResultError, match="^pressure:"):
        LJ.check_result({**dense_run, "pressure": "1.2"})
    with pytest.raises(ResultError, match="^result:"):
        LJ.check_result([1, 2])


def _stop_after(calls: int):
    count = {"n": 0}

    def should_stop() -> bool:
        count["n"] += 1
        return count["n"] > calls

    return should_stop


def test_lj_pause_then_resume_completes_the_same_run(tmp_path):
    params = {"temperature": 0.9, "density": 0.776, "steps": 300, "equilibration_steps": 100, "seed": 3}
    straight = LJ.run(params)
    ckpt = tmp_path / "lj.ckpt"
    with pytest.raises(Paused):
        LJ.run(params, checkpoint=ckpt, should_stop=_stop_after(4))
    assert ckpt.exists()
    resumed = LJ.run(params, checkpoint=ckpt)
    assert resumed["samples"] == straight["samples"]
    for key in ("energy_per_particle", "pressure"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6)
    with pytest.raises(CheckpointError, match="^checkpoint:"):
        LJ.run({**params, "seed": 4}, checkpoint=ckpt)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="^checkpoint:"):
        LJ.run(params, checkpoint=ckpt)


def test_lj_gas_replicas_run_together_and_agree_with_nist_loosely():
    # NIST T*=0.9, rho*=0.003: U/N = -2.9787e-2, P* = 2.6485e-3
    result = LJ.run({"temperature": 0.9, "density": 0.003, "steps": 1200, "equilibration_steps": 1200})
    assert result["samples"] == 32 * math.ceil(1200 / 67)  # 32 boxes x trajectories of production
    assert result["energy_per_particle"] == pytest.approx(-2.9787e-2, abs=6e-3)
    assert result["pressure"] == pytest.approx(2.6485e-3, abs=1e-4)


SMALL = "HPHPHHHPPPHHHHPPHH"  # best-known energy -8


def test_hp_fold_short_run_finds_best_energy_and_verifies():
    params = {"sequence": SMALL, "sweeps": 1500, "seed": 0}
    result = HP.run(params)
    HP.check_result(result)
    assert result["energy"] == -8
    assert len(result["conformation"]) == len(SMALL) and result["conformation"][0] == [0, 0]
    assert HP.verify(params, result)
    assert len(json.dumps(result)) <= HP.max_result_bytes


def test_hp_fold_verify_rejects_forged_energy_overlap_and_broken_chain():
    params = {"sequence": "HPPH"}
    square = [[0, 0], [1, 0], [1, 1], [0, 1]]  # residues 0 and 3 touch: one H-H contact
    assert HP.verify(params, {"energy": -1, "conformation": square})
    assert not HP.verify(params, {"energy": -2, "conformation": square})
    assert not HP.verify(params, {"energy": 0, "conformation": square})
    assert not HP.verify(params, {"energy": -1, "conformation": [[0, 0], [1, 0], [0, 0], [0, 1]]})
    assert not HP.verify(params, {"energy": -1, "conformation": [[0, 0], [1, 0], [1, 1], [0, 3]]})
    assert not HP.verify(params, {"energy": -1, "conformation": square[:3]})
    with pytest.raises(ResultError, match="^conformation:"):
        HP.check_result({"energy": -1, "conformation": [[0, 0], [1, "a"]]})
    with pytest.raises(ResultError, match="^energy:"):
        HP.check_result({"energy": -1.0, "conformation": square})


def test_hp_fold_compare_is_by_energy_only():
    a = {"energy": -3, "conformation": [[0, 0]]}
    assert HP.compare(a, {"energy": -3, "conformation": [[5, 5]]})
    assert not HP.compare(a, {"energy": -2, "conformation": [[0, 0]]})


def test_hp_fold_pause_then_resume_matches_uninterrupted_run(tmp_path):
    params = {"sequence": "PPHPPHHPPPPHHPPPPHHPPPPHH", "sweeps": 300, "seed": 5}
    straight = HP.run(params)
    ckpt = tmp_path / "hp.json"
    with pytest.raises(Paused):
        HP.run(params, checkpoint=ckpt, should_stop=_stop_after(120))
    assert HP.run(params, checkpoint=ckpt) == straight
