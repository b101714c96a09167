"""Science apps: registry and protocol, noop, lj-md (Lennard-Jones HMC/MD) and hp-fold (2D HP folding)."""

from __future__ import annotations

import copy
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from jobs.science.apps import (
    APPS,
    App,
    CheckpointError,
    ParamError,
    Paused,
    ResultError,
    UnknownAppError,
    get_app,
    hp_fold,
    hp_search,
    lj_blocks,
    lj_md,
    lj_physics,
)
from jobs.science.apps.lj_sim import nve_energies

torch.set_num_threads(1)

LJ = get_app("lj-md")
HP = get_app("hp-fold")
NOOP = get_app("noop")
# a short liquid run: NIST SRSW T*=0.9, rho*=0.776: U/N = -5.4689, P* = 0.24056. 256 particles, a whole fcc
# lattice and about the smallest box the cut-off and skin allow: finite-size effects stay inside the tolerances
DENSE = {"temperature": 0.9, "density": 0.776, "n_particles": 256, "skin": 0.45, "steps": 600, "equilibration_steps": 300}
# a short dilute-gas run with the gas defaults otherwise (32 boxes, so 32 blocks; the insertion
# estimator), far fewer insertions than a real unit
GAS = {"temperature": 0.9, "density": 0.003, "steps": 144, "equilibration_steps": 96, "insertions": 500}


def test_get_app_unknown_name_lists_known_apps():
    with pytest.raises(UnknownAppError, match=r"^app: unknown app 'x' \(known: hp-fold, lj-md, noop\)$"):
        get_app("x")
    assert sorted(APPS) == ["hp-fold", "lj-md", "noop"]
    assert get_app("lj-md").needs.gpu_capable and not get_app("hp-fold").needs.gpu


def test_every_app_follows_the_protocol_and_wants_two_agreeing_copies():
    for app in APPS.values():
        assert isinstance(app, App)
        # no app's verify() proves the work was done, so each needs a second host's copy
        assert app.default_quorum == 2, app.name
    assert App.__doc__ and all(getattr(App, m).__doc__ for m in ("run", "verify", "compare", "check_result"))


@pytest.mark.parametrize(
    ("app", "params", "field"),
    [
        ("lj-md", {"density": 0.8}, "temperature"),
        ("lj-md", {"temperature": 0.9, "density": -1}, "density"),
        ("lj-md", {"temperature": 0.9, "density": 0.8, "steps": "many"}, "steps"),
        ("lj-md", {"temperature": 0.9, "density": 0.8, "steps": 10, "trajectory_steps": 50}, "steps"),
        ("lj-md", {"temperature": 0.9, "density": 0.8, "n_particles": 40}, "n_particles"),
        ("lj-md", {"temperature": 0.9, "density": 0.8, "colour": 1}, "colour"),
        ("hp-fold", {"sequence": "HPXH"}, "sequence"),
        ("hp-fold", {"sequence": ""}, "sequence"),
        ("hp-fold", {"sequence": "HPPH", "sweeps": 0}, "sweeps"),
        ("hp-fold", {"sequence": "HPPH", "t_min": 0.5, "t_max": 0.4}, "t_max"),
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
    for app, params in ((LJ, {"temperature": 0.9, "density": 0.776}), (LJ, {"temperature": 0.85, "density": 0.005}),
                        (HP, {"sequence": "hpph"}), (HP, {"sequence": "HP" * 60})):
        p = app.validate_params(params)
        assert app.validate_params(p) == p
        assert set(app.params_schema()) == set(p)
    p = LJ.validate_params({"temperature": 0.9, "density": 0.776})
    assert p["n_particles"] == 500 and p["seed"] == 0 and p["steps"] > 0
    assert HP.validate_params({"sequence": "hpph"})["sequence"] == "HPPH"
    assert LJ.flops(p) > HP.flops({"sequence": "HPPH"}) > 0


def test_noop_echoes_and_compares_exactly():
    result = NOOP.run({"x": 7})
    assert result == {"y": 7}
    NOOP.check_result(result)
    assert NOOP.compare(result, {"y": 7}) and not NOOP.compare(result, {"y": 8})
    assert len(json.dumps(result)) <= NOOP.max_result_bytes
    with pytest.raises(ResultError, match="^y:"):
        NOOP.check_result({"y": "7"})


# ---------------------------------------------------------------- lj-md physics


def test_tail_corrections_match_numerical_integrals():
    rho, rc = 0.8, 3.0
    r = np.linspace(rc, 200.0, 2_000_001)
    u = 4 * (r**-12 - r**-6)
    du = 4 * (-12 * r**-13 + 6 * r**-7)
    u_tail = 2 * math.pi * rho * np.trapezoid(u * r**2, r)
    p_tail = -2 * math.pi / 3 * rho**2 * np.trapezoid(du * r**3, r)
    assert lj_blocks.tail_energy_per_particle(rho, rc) == pytest.approx(u_tail, rel=1e-5)
    assert lj_blocks.tail_pressure(rho, rc) == pytest.approx(p_tail, rel=1e-5)


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
        # the stored periodic image gives each pair its minimum-image separation
        d = x[pairs.i] - x[pairs.j] - pairs.shift
        assert float(d.abs().max()) < 4.0


def test_forces_energy_and_virial_agree_with_a_direct_sum():
    n, box = 256, (256 / 0.6) ** (1 / 3)
    gen = torch.Generator().manual_seed(2)
    x = lj_physics.fcc_lattice(n, box, torch.float64) + 0.1 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    x.requires_grad_(True)
    d = x[:, None] - x[None]
    d = d - box * torch.round(d.detach() / box)
    eye = torch.eye(n, dtype=torch.bool)
    r2 = d.square().sum(-1) + eye
    inside = (r2 < 9.0) & ~eye
    u = torch.where(inside, 4 * (r2**-6 - r2**-3), torch.zeros_like(r2)).sum() / 2
    w = torch.where(inside, 24 * (2 * r2**-6 - r2**-3), torch.zeros_like(r2)).sum() / 2
    (grad,) = torch.autograd.grad(u, x)
    pairs = lj_physics.build_pairs(x.detach(), 1, box, 3.5)
    f, observed = lj_physics.forces_energy_virial(x.detach(), pairs, 1, 3.0, observe=True)
    assert torch.allclose(f, -grad, rtol=1e-9, atol=1e-9)
    assert float(observed[0, 0]) == pytest.approx(u.item(), rel=1e-12)
    assert float(observed[0, 1]) == pytest.approx(w.item(), rel=1e-12)


def test_velocity_verlet_conserves_energy_without_thermostat():
    coarse = nve_energies(LJ.validate_params({**DENSE, "dt": 0.01}), 100)
    fine = nve_energies(LJ.validate_params({**DENSE, "dt": 0.005}), 200)
    spread_coarse = max(coarse) - min(coarse)
    spread_fine = max(fine) - min(fine)
    assert spread_fine < 2e-3  # per particle, out of |E/N| ~ 4.7
    assert 2.5 < spread_coarse / spread_fine < 6  # second-order integrator: error ~ dt^2


# ---------------------------------------------------------------- lj-md units and their results


@pytest.fixture(scope="module")
def dense_run():
    return LJ.run({**DENSE, "seed": 1})


@pytest.fixture(scope="module")
def gas_runs():
    return LJ.run({**GAS, "seed": 1}), LJ.run({**GAS, "seed": 2})


def test_short_dense_run_is_near_nist_and_carries_its_blocks(dense_run):
    LJ.check_result(dense_run)
    assert LJ.verify(DENSE, dense_run)
    assert dense_run["energy_per_particle"] == pytest.approx(-5.4689, abs=0.05)
    assert dense_run["pressure"] == pytest.approx(0.24056, abs=0.3)
    assert 0 < dense_run["energy_stderr"] < 0.05 and 0 < dense_run["pressure_stderr"] < 0.3
    assert 0.5 < dense_run["acceptance"] <= 1.0
    # one box: its 12 production trajectories of 50 steps make 12 blocks of one trajectory each
    assert dense_run["samples"] == 12 and len(dense_run["blocks"]) == 12
    assert len(json.dumps(dense_run)) <= LJ.max_result_bytes


def test_gas_boxes_run_together_one_block_each_and_insertion_is_near_nist_at_once(gas_runs):
    result = gas_runs[0]
    p = LJ.validate_params(GAS)
    assert p["replicas"] == 32 and len(result["blocks"]) == 32
    assert result["samples"] == 32 * math.ceil(p["steps"] / p["trajectory_steps"])
    # NIST T*=0.9, rho*=0.003: U/N = -2.9787e-2, P* = 2.6485e-3. Far too short for the boxes'
    # own pairs to settle, but a test particle's view of the box hardly depends on that
    assert result["energy_per_particle"] == pytest.approx(-2.9787e-2, abs=1.5e-3)
    assert result["pressure"] == pytest.approx(2.6485e-3, abs=3e-5)
    assert LJ.verify(GAS, result)
    assert len(json.dumps(result)) <= LJ.max_result_bytes


def test_verify_recomputes_the_statistics_from_the_blocks(gas_runs):
    honest = gas_runs[0]
    assert LJ.verify(GAS, copy.deepcopy(honest))

    def forged(**changes):
        out = copy.deepcopy(honest)
        out.update(changes)
        return out

    # claimed numbers the blocks do not give
    for key in ("energy_per_particle", "energy_stderr", "pressure", "pressure_stderr"):
        assert not LJ.verify(GAS, forged(**{key: honest[key] * (1 + 1e-6)})), key
    assert not LJ.verify(GAS, forged(energy_per_particle=-99.0, energy_stderr=1e300))
    for bad in (1e300, 0.0, -honest["energy_stderr"], float("nan"), float("inf")):
        assert not LJ.verify(GAS, forged(energy_stderr=bad)), bad
        assert not LJ.verify(GAS, forged(pressure_stderr=bad)), bad
    # a block edited without the claims following it
    blocks = copy.deepcopy(honest["blocks"])
    blocks[3][1] *= 1.5
    assert not LJ.verify(GAS, forged(blocks=blocks))
    # the counts these params produce, exactly
    assert not LJ.verify(GAS, forged(samples=honest["samples"] + 1))
    assert not LJ.verify(GAS, forged(samples=honest["samples"] // 2))
    assert not LJ.verify(GAS, {**_restated(GAS, honest["blocks"][:-1]), "samples": honest["samples"],
                               "acceptance": honest["acceptance"]})
    # insertion weights exp(-psi/T) are positive
    negative = copy.deepcopy(honest["blocks"])
    negative[0] = [-v for v in negative[0]]
    assert not LJ.verify(GAS, {**honest, **_restated(GAS, negative)})
    nan_block = copy.deepcopy(honest["blocks"])
    nan_block[5][2] = float("nan")
    assert not LJ.verify(GAS, forged(blocks=nan_block))
    assert not LJ.verify(GAS, forged(acceptance=1.5))


def _restated(params, blocks):
    """A forger's consistent claims for made-up blocks."""
    return {**lj_blocks.block_statistics(blocks, LJ.validate_params(params)), "blocks": blocks}


def test_verify_knows_every_direct_sample_weighs_at_least_one(dense_run):
    # each trajectory adds its chain state at weight 1: scaling all weights down keeps the
    # ratios (so every claim) but cannot be honest once a block weighs less than its count
    scaled = [[b[0] / 100, b[1] / 100, b[2] / 100] for b in dense_run["blocks"]]
    forged = {**dense_run, **_restated(DENSE, scaled)}
    assert forged["energy_per_particle"] == pytest.approx(dense_run["energy_per_particle"], rel=1e-12)
    assert LJ.verify(DENSE, {**dense_run, **_restated(DENSE, dense_run["blocks"])})
    assert not LJ.verify(DENSE, forged)


def test_check_result_rejects_malformed_lj_results(gas_runs):
    honest = gas_runs[0]
    cases = [
        ({**honest, "pressure": "1.2"}, "pressure"),
        ({k: v for k, v in honest.items() if k != "blocks"}, "blocks"),
        ({**honest, "blocks": [[1.0, 2.0]] * 32}, "blocks"),
        ({**honest, "blocks": [[1.0, 2.0, 3.0]] * 33}, "blocks"),
        ({**honest, "blocks": [[1.0, True, 3.0]] * 32}, "blocks"),
        ({**honest, "samples": 7.0}, "samples"),
        ({**honest, "extra": 1}, "extra"),
    ]
    for result, field in cases:
        with pytest.raises(ResultError, match=f"^{field}:"):
            LJ.check_result(result)
    with pytest.raises(ResultError, match="^result:"):
        LJ.check_result([1, 2])


def test_compare_takes_the_smaller_error_bar(gas_runs):
    a, b = gas_runs
    assert a["energy_per_particle"] != b["energy_per_particle"]
    assert LJ.compare(a, b) and LJ.compare(b, a)
    assert LJ.compare(a, copy.deepcopy(a))
    # a liar's huge error bar buys nothing: the band is the honest one
    liar = {**a, "energy_per_particle": -99.0, "energy_stderr": 1e300}
    assert not LJ.compare(a, liar) and not LJ.compare(liar, a)
    shifted = {**b, "energy_per_particle": b["energy_per_particle"] + 10 * a["energy_stderr"], "energy_stderr": 1.0}
    assert not LJ.compare(a, shifted)
    # and a tiny one only narrows the band against the one who claims it
    bold = {**b, "energy_stderr": 1e-12, "pressure_stderr": 1e-15}
    assert not LJ.compare(a, bold)
    band = lj_md.COMPARE_SIGMAS * math.sqrt(2) * a["energy_stderr"]
    inside = {**a, "energy_per_particle": a["energy_per_particle"] + 0.9 * band, "energy_stderr": 10.0}
    outside = {**a, "energy_per_particle": a["energy_per_particle"] + 1.1 * band, "energy_stderr": 10.0}
    assert LJ.compare(a, inside) and not LJ.compare(a, outside)


def _stop_after(calls: int):
    count = {"n": 0}

    def should_stop() -> bool:
        count["n"] += 1
        return count["n"] > calls

    return should_stop


def test_lj_pause_then_resume_completes_the_same_run(tmp_path):
    params = {**DENSE, "steps": 150, "equilibration_steps": 50, "seed": 3}
    straight = LJ.run(params)
    ckpt = tmp_path / "lj.ckpt"
    with pytest.raises(Paused):
        LJ.run(params, checkpoint=ckpt, should_stop=_stop_after(2))
    assert ckpt.exists()
    resumed = LJ.run(params, checkpoint=ckpt)
    assert resumed["samples"] == straight["samples"] and len(resumed["blocks"]) == len(straight["blocks"])
    assert LJ.verify(params, resumed)
    for key in ("energy_per_particle", "pressure"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6)
    with pytest.raises(CheckpointError, match="^checkpoint:"):
        LJ.run({**params, "seed": 4}, checkpoint=ckpt)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="^checkpoint:"):
        LJ.run(params, checkpoint=ckpt)


def test_gas_effort_follows_the_dilute_limit_model():
    # the pair integrals give U/N of a dilute gas to within its three-body corrections
    i1, i2, j2 = lj_md.pair_integrals(0.85)
    two_body = 0.005 * i1 / 2 + lj_blocks.tail_energy_per_particle(0.005, 3.0)
    assert two_body == pytest.approx(-5.1901e-02, rel=0.01)
    assert i2 > 0 and j2 > i2
    # ~1/rho more trajectories and equilibration as the gas thins; the liquid does not use it
    thin, thick = (LJ.validate_params({"temperature": 0.9, "density": rho}) for rho in (0.001, 0.01))
    assert thin["steps"] > 5 * thick["steps"] and thin["equilibration_steps"] == 10 * thick["equilibration_steps"]
    assert thin["insertions"] > 0 and LJ.validate_params({"temperature": 0.9, "density": 0.8})["insertions"] == 0


def test_a_dilute_gas_unit_costs_far_less_than_before():
    # before: 32 boxes x (100_000 + 5000) steps at rho* = 0.005, 500/rho* + 5000 at 0.003
    before = {0.005: 32 * 500 * 105_000, 0.003: 32 * 500 * 171_667}
    for t, rho in ((0.85, 0.005), (0.9, 0.003)):
        p = LJ.validate_params({"temperature": t, "density": rho})
        particle_steps = p["replicas"] * p["n_particles"] * (p["steps"] + p["equilibration_steps"])
        # a test insertion measured at about 8 particle-steps of work
        insertions = p["replicas"] * math.ceil(p["steps"] / p["trajectory_steps"]) * p["insertions"]
        assert particle_steps + 8 * insertions < before[rho] / 5, (t, rho)


# ---------------------------------------------------------------- hp-fold

SMALL = "HPHPHHHPPPHHHHPPHH"  # best-known energy -8
S25 = "PPHPPHHPPPPHHPPPPHHPPPPHH"  # best-known energy -8
# what hp-fold v3 returns for S25, 150 sweeps, 3 replicas, seed 7 (energy, sha256 prefix of its JSON)
GOLDEN_ENERGY, GOLDEN_DIGEST = -7, "ad10ddab33e4d853"


def test_hp_effort_grows_with_the_chain_and_explicit_params_win():
    short, long = HP.validate_params({"sequence": SMALL}), HP.validate_params({"sequence": "HP" * 50})

    def attempts(p):
        return p["sweeps"] * p["replicas"] * len(p["sequence"])

    assert attempts(short) <= 500_000  # a few hundredths of a second
    assert attempts(long) > 50 * attempts(short) and long["replicas"] > short["replicas"]
    lengths = [10, 20, 40, 64, 85, 100, 200]
    efforts = [attempts(HP.validate_params({"sequence": "H" * n})) for n in lengths]
    assert efforts == sorted(efforts)
    explicit = {"sweeps": 10, "replicas": 2, "t_min": 0.5, "t_max": 0.9}
    p = HP.validate_params({"sequence": "HP" * 50, **explicit})
    assert {k: p[k] for k in explicit} == explicit
    assert "length" in HP.params_schema()["sweeps"]
    # the rule as the schema states it
    assert hp_fold.default_effort(64) == {"sweeps": 208334, "replicas": 3, "t_min": 0.3, "t_max": 0.5}
    assert hp_fold.default_effort(100)["replicas"] == 4 and hp_fold.default_effort(20)["replicas"] == 2


def test_hp_fold_short_run_finds_best_energy_and_verifies():
    params = {"sequence": SMALL, "seed": 0}
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


def test_hp_fold_is_a_pure_function_of_its_params():
    params = {"sequence": S25, "sweeps": 150, "replicas": 3, "seed": 7}
    first = HP.run(params)
    assert HP.run(dict(params)) == first
    assert HP.run({**params, "seed": 8})["conformation"] != first["conformation"]
    # pinned: the same params must give these exact bits on every machine and Python; a change
    # to the search that alters them needs a new app version (hosts of both would disagree)
    digest = hashlib.sha256(json.dumps(first, sort_keys=True).encode()).hexdigest()[:16]
    assert (first["energy"], digest) == (GOLDEN_ENERGY, GOLDEN_DIGEST)



def test_hp_search_keeps_every_replica_a_valid_fold_of_its_energy():
    # hot rungs accept most moves, so the chains wander across the torus's seam many times
    p = HP.validate_params({"sequence": S25, "seed": 3, "replicas": 4, "t_min": 0.3, "t_max": 3.0})
    search = hp_search.Search(p)
    mask = search.side - 1
    across_seam = 0  # replicas seen with a bond that wraps around the torus
    for _ in range(40):
        search.advance(25)
        for r, sites in enumerate(search.pos):
            assert HP.verify(p, {"energy": int(search.energy[r]), "conformation": search.fold(sites)}), r
            across_seam += any(abs((a >> search.shift) - (b >> search.shift)) > 1 or abs((a & mask) - (b & mask)) > 1
                               for a, b in zip(sites.tolist(), sites.tolist()[1:]))
    assert across_seam > 0
    assert HP.verify(p, {"energy": search.best_energy, "conformation": search.best_conformation()})


def test_hp_acceptance_tables_use_no_libm():
    for x in (0.0, -1e-3, -0.5, -1.0, -3.333, -17.5, -200.0, 2.5):
        assert hp_search.exp_exact(x) == pytest.approx(math.exp(x), rel=1e-14)
    for x in (1e-3, 0.37, 1.0, 2.0, 7.5, 1e4):
        assert hp_search.log_exact(x) == pytest.approx(math.log(x), rel=1e-14, abs=1e-15)
    assert hp_search.exp_exact(0.0) == 1.0 and hp_search.exp_exact(-1000.0) == 0.0
    temps = hp_search.ladder(0.3, 0.6, 4)
    assert temps[0] == 0.3 and temps[-1] == pytest.approx(0.6, rel=1e-14)
    assert temps[1] / temps[0] == pytest.approx(temps[3] / temps[2], rel=1e-14)


def test_hp_compare_demands_the_same_fold_so_laziness_earns_nothing():
    params = {"sequence": S25, "sweeps": 150, "seed": 3}
    honest = HP.run(params)
    assert HP.compare(honest, json.loads(json.dumps(honest)))
    # a straight chain is a valid fold: verify() passes it, only a second copy exposes it
    lazy = {"energy": 0, "conformation": [[x, 0] for x in range(len(S25))]}
    assert HP.verify(params, lazy) and not HP.compare(honest, lazy)
    # a fold as good as the honest one, but not this seed's (here: its mirror image)
    mirror = {"energy": honest["energy"], "conformation": [[x, -y] for x, y in honest["conformation"]]}
    assert mirror != honest and HP.verify(params, mirror)
    assert not HP.compare(honest, mirror) and not HP.compare(mirror, honest)
    assert not HP.compare(honest, {**honest, "energy": honest["energy"] - 1})


def test_hp_fold_pause_then_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    params = {"sequence": S25, "sweeps": 450, "replicas": 3, "seed": 5}
    straight = HP.run(params)
    ckpt = tmp_path / "hp.json"
    # ask whether to stop after every sweep, and keep a periodic checkpoint every 100
    monkeypatch.setattr(hp_fold, "CHUNK_ATTEMPTS", 1)
    monkeypatch.setattr(hp_fold, "CHECKPOINT_EVERY_CHUNKS", 100)
    # pause twice, the second time after a periodic checkpoint
    with pytest.raises(Paused):
        HP.run(params, checkpoint=ckpt, should_stop=_stop_after(120))
    with pytest.raises(Paused):
        HP.run(params, checkpoint=ckpt, should_stop=_stop_after(190))
    assert json.loads(ckpt.read_text())["sweeps_done"] == 310
    assert HP.run(params, checkpoint=ckpt) == straight
    with pytest.raises(CheckpointError, match="^checkpoint:"):
        HP.run({**params, "seed": 6}, checkpoint=ckpt)
    ckpt.write_text("{")
    with pytest.raises(CheckpointError, match="^checkpoint:"):
        HP.run(params, checkpoint=ckpt)
    # one of the interpreted search (v2), for the same params: no energies, sites as [x, y]
    ckpt.write_text(json.dumps({"params": HP.validate_params(params), "sweeps_done": 10, "best_energy": 0,
                                "best": [[x, 0] for x in range(len(S25))], "replicas": [], "rng": [3, [1], None]}))
    with pytest.raises(CheckpointError, match="^checkpoint: .* does not hold an hp-fold v3 search"):
        HP.run(params, checkpoint=ckpt)
