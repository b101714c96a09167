"""`lj-md`: Lennard-Jones fluid, NVT molecular dynamics, energy and pressure with error bars.

Thermostat choice. The reference data (NIST SRSW) are Monte Carlo averages for
the potential truncated (not shifted) at 3 sigma. Thermostatted MD (Langevin,
CSVR) with that potential samples a slightly different ensemble: its forces miss
the energy step at the cut-off, so it samples the truncated-and-shifted
potential, and its finite time step adds a further bias; at liquid densities
both move U/N by more than the NIST error bars. We thermostat by Hybrid Monte
Carlo instead: velocities are redrawn from Maxwell-Boltzmann, a velocity-Verlet
trajectory is run, and its end point is accepted by the Metropolis rule on the
*truncated* Hamiltonian. That samples exactly NIST's ensemble at any time step.
Frequent velocity redraws also break up the bound dimers that make a dilute
gas decorrelate slowly.

Sampling. Besides the chain states, points along each trajectory are used:
Verlet is a volume-preserving map, so a point k steps from an equilibrium start
is an exact canonical sample once weighted by exp(-(H_k - H_0)/T). Error bars
come from 32 block estimates of these weighted averages (blocks are runs of
consecutive trajectories; with several replicas, each replica gives its own blocks).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from jobs.science.apps import lj_physics as phys
from jobs.science.apps.base import CheckpointError, Needs, ParamError, Paused, ResultError
from jobs.science.apps.checkpoint import atomic_write
from jobs.science.apps.params import as_float, as_int, reject_unknown, require

R_CUT = 3.0
CHECKPOINT_EVERY_S = 30.0
COMPARE_SIGMAS = 5.0  # agreement band in combined standard errors; false rejections ~1e-6
RESULT_FIELDS = ("energy_per_particle", "energy_stderr", "pressure", "pressure_stderr")
BLOCKS = 32  # block means used for the error bars
MELT_FACTOR = 2.0


GAS_BELOW = 0.1  # densities below this get the dilute-gas defaults


def _defaults(density: float) -> dict:
    """Per-regime defaults, calibrated so energy_stderr meets its target (0.2% of |U/N|, <= 0.003).

    Liquid: one box; 50k steps give a U/N error bar near 0.002, and 5k steps of
    equilibration (a quarter of them hot) melt the fcc start even at rho* = 0.9.
    Gas: U/N is shot noise from the few pairs in contact. The variance of U/N
    grows as rho and its target as rho**2, so the run grows as 1/rho. Measured
    stderr**2 * (replica time) ~ 0.074 * rho at T* = 0.85 (0.034 * rho at 0.9),
    hence 500/rho steps of 32 boxes side by side (amortising per-step tensor
    overhead) at dt = 0.018, where HMC still accepts ~95% of trajectories.
    """
    if density < GAS_BELOW:
        steps = int(min(2_000_000, max(20_000, 500.0 / density)))
        return {"replicas": 32, "steps": steps, "equilibration_steps": 5000, "dt": 0.018,
                "trajectory_steps": 67, "skin": 2.0, "sample_every": 5}
    return {"replicas": 1, "steps": 50_000, "equilibration_steps": 5000, "dt": 0.0075,
            "trajectory_steps": 50, "skin": 0.5, "sample_every": 10}


@dataclass
class _State:
    """Everything a checkpoint holds: enough to continue the same run."""

    x: torch.Tensor
    rng: torch.Tensor
    trajectories_done: int = 0
    accepted: int = 0
    # per production trajectory, per replica: [sum w, sum w*U, sum w*W] over its sampled points
    sums: list[list[list[float]]] = field(default_factory=list)


class LJMD:
    name = "lj-md"
    version = 1
    needs = Needs(gpu=False, gpu_capable=True, min_vram_bytes=256 * 2**20, min_compute_capability=5.0)
    self_verifying = False
    max_result_bytes = 4096

    def params_schema(self) -> dict[str, str]:
        return {
            "temperature": "reduced temperature T* (required, 0.05..100)",
            "density": "reduced number density rho* (required, 1e-5..1.2)",
            "n_particles": "particles per box (default 500; the box must exceed 2*(3 sigma cut-off + skin))",
            "steps": "production MD steps per replica (default 500/rho* below rho*=0.1, else 50000)",
            "equilibration_steps": "MD steps per replica before sampling, the first quarter at 2x temperature (default 5000)",
            "replicas": "independent boxes simulated together (default 32 below rho*=0.1, else 1)",
            "dt": "time step, reduced units (default 0.018 gas, 0.0075 liquid; HMC removes its bias)",
            "trajectory_steps": "MD steps between velocity redraws and Metropolis tests (default 67 gas, 50 liquid)",
            "sample_every": "MD steps between sampled points along a trajectory (default 5 gas, 10 liquid)",
            "skin": "Verlet-list skin in sigma (default 2.0 gas, 0.5 liquid)",
            "seed": "random seed (default 0)",
        }

    def validate_params(self, params: dict) -> dict:
        reject_unknown(params, set(self.params_schema()))
        temperature = as_float(params, "temperature", require(params, "temperature"), lo=0.05, hi=100.0)
        density = as_float(params, "density", require(params, "density"), lo=1e-5, hi=1.2)
        d = _defaults(density)
        n = as_int(params, "n_particles", 500, lo=32, hi=100_000)
        skin = as_float(params, "skin", d["skin"], lo=0.05, hi=3.0)
        box = (n / density) ** (1.0 / 3.0)
        if box < 2.0 * (R_CUT + skin):
            raise ParamError(
                f"n_particles: box edge {box:.2f} must exceed 2*(cut-off+skin) = {2 * (R_CUT + skin):.2f}; use more particles"
            )
        steps = as_int(params, "steps", d["steps"], lo=1, hi=10**9)
        return {
            "temperature": temperature,
            "density": density,
            "n_particles": n,
            "steps": steps,
            "equilibration_steps": as_int(params, "equilibration_steps", d["equilibration_steps"], lo=0, hi=10**9),
            "replicas": as_int(params, "replicas", d["replicas"], lo=1, hi=4096),
            "dt": as_float(params, "dt", d["dt"], lo=1e-5, hi=0.02),
            "trajectory_steps": as_int(params, "trajectory_steps", d["trajectory_steps"], lo=1, hi=100_000),
            "sample_every": as_int(params, "sample_every", d["sample_every"], lo=1, hi=100_000),
            "skin": skin,
            "seed": as_int(params, "seed", 0, lo=0, hi=2**63 - 1),
        }

    def flops(self, params: dict) -> float:
        p = self.validate_params(params)
        r_list = R_CUT + p["skin"]
        pairs = 0.5 * p["n_particles"] * min(p["n_particles"], p["density"] * 4.0 / 3.0 * math.pi * r_list**3)
        steps = p["steps"] + p["equilibration_steps"]
        return 40.0 * pairs * steps * p["replicas"]

    def run(
        self,
        params: dict,
        *,
        device: str = "cpu",
        checkpoint: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict:
        p = self.validate_params(params)
        sim = _Simulation(p, torch.device(device))
        state = _load(checkpoint, p) if checkpoint is not None and Path(checkpoint).exists() else sim.fresh_state()
        sim.advance(state, checkpoint, should_stop)
        return sim.summarise(state)

    def check_result(self, result: object) -> None:
        if not isinstance(result, dict):
            raise ResultError(f"result: expected a JSON object, got {type(result).__name__}")
        for key in RESULT_FIELDS:
            value = result.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ResultError(f"{key}: expected a number, got {value!r}")
        for key in ("acceptance", "samples"):
            if key in result and (isinstance(result[key], bool) or not isinstance(result[key], (int, float))):
                raise ResultError(f"{key}: expected a number, got {result[key]!r}")
        extra = sorted(set(result) - set(RESULT_FIELDS) - {"acceptance", "samples"})
        if extra:
            raise ResultError(f"{extra[0]}: unexpected field in lj-md result")

    def compare(self, a: dict, b: dict) -> bool:
        """Agree when both observables differ by less than COMPARE_SIGMAS combined standard errors."""
        for value, err in (("energy_per_particle", "energy_stderr"), ("pressure", "pressure_stderr")):
            band = COMPARE_SIGMAS * math.hypot(a[err], b[err]) + 1e-9 * (1.0 + abs(a[value]) + abs(b[value]))
            if not abs(a[value] - b[value]) <= band:
                return False
        return True

    def verify(self, params: dict, result: dict) -> bool:
        values = [result[k] for k in RESULT_FIELDS]
        return all(math.isfinite(v) for v in values) and result["energy_stderr"] >= 0 and result["pressure_stderr"] >= 0


class _Simulation:
    def __init__(self, p: dict, device: torch.device) -> None:
        self.p = p
        self.device = device
        # float64: the Metropolis test takes a small difference of two large energies
        self.dtype = torch.float64
        self.n = p["n_particles"]
        self.reps = p["replicas"]
        self.box = (self.n / p["density"]) ** (1.0 / 3.0)
        self.r_list = R_CUT + p["skin"]
        self.traj_steps = p["trajectory_steps"]
        self.equil_traj = math.ceil(p["equilibration_steps"] / self.traj_steps)
        self.total_traj = self.equil_traj + max(1, math.ceil(p["steps"] / self.traj_steps))
        # random numbers come from a CPU generator so a run is reproducible on any device
        self.gen = torch.Generator(device="cpu")

    def fresh_state(self) -> _State:
        self.gen.manual_seed(self.p["seed"])
        lattice = phys.fcc_lattice(self.n, self.box, self.dtype)
        x = torch.cat([lattice] * self.reps, dim=0).to(self.device)
        return _State(
            x=x,
            rng=self.gen.get_state(),
        )

    def _rebuild(self, x: torch.Tensor) -> None:
        self.pairs = phys.build_pairs(x, self.reps, self.box, self.r_list)
        self.x_ref = x.clone()

    def _list_stale(self, x: torch.Tensor) -> bool:
        moved = (x - self.x_ref).square_() @ torch.ones(3, dtype=x.dtype, device=x.device)
        return bool((moved.max() > (0.5 * (self.r_list - R_CUT)) ** 2).item())

    def advance(self, state: _State, checkpoint: Path | None, should_stop: Callable[[], bool] | None) -> None:
        dt, every = self.p["dt"], self.p["sample_every"]
        self.gen.set_state(state.rng)
        x = state.x.to(self.device)
        self._rebuild(x)
        f = phys.forces(x, self.pairs, self.box, R_CUT)
        u, w, _ = phys.energy_virial(x, self.pairs, self.reps, self.box, R_CUT)
        last_save = time.monotonic()
        while state.trajectories_done < self.total_traj:
            if should_stop is not None and should_stop():
                state.x, state.rng = x, self.gen.get_state()
                if checkpoint is not None:
                    _save(checkpoint, self.p, state)
                raise Paused(f"lj-md paused after {state.trajectories_done}/{self.total_traj} trajectories")
            # the first quarter of equilibration runs hot: a lattice start at liquid density can
            # survive as a superheated crystal for a long time at the target temperature
            hot = state.trajectories_done < self.equil_traj // 4
            T = self.p["temperature"] * (MELT_FACTOR if hot else 1.0)
            v = (torch.randn(x.shape, generator=self.gen, dtype=self.dtype) * math.sqrt(T)).to(self.device)
            h0 = u + self._kinetic(v)
            # weighted path sums (sum wt, sum wt*U, sum wt*W), starting with the chain state itself
            sums = torch.stack([torch.ones_like(u), u, w], dim=1)
            x0, f0 = x.clone(), f
            for step in range(1, self.traj_steps + 1):
                # in place, and positions are never wrapped: minimum image copes with any offset
                v.add_(f, alpha=0.5 * dt)
                x.add_(v, alpha=dt)
                if self._list_stale(x):
                    self._rebuild(x)
                f = phys.forces(x, self.pairs, self.box, R_CUT)
                v.add_(f, alpha=0.5 * dt)
                if step % every == 0 or step == self.traj_steps:
                    uk, wk, _ = phys.energy_virial(x, self.pairs, self.reps, self.box, R_CUT)
                    hk = uk + self._kinetic(v)
                    # Verlet is a volume-preserving map, so a path point weighted by
                    # exp(-(H_k - H_0)/T) is an exact canonical sample (see module doc)
                    weight = torch.exp(torch.clamp((h0 - hk) / T, max=50.0))
                    sums += torch.stack([weight, weight * uk, weight * wk], dim=1)
            uniform = torch.rand(self.reps, generator=self.gen, dtype=self.dtype).to(self.device)
            accept = uniform < torch.exp(torch.clamp((h0 - hk) / T, max=0.0))
            per_particle = accept.repeat_interleave(self.n).unsqueeze(1)
            x = torch.where(per_particle, x, x0)
            f = torch.where(per_particle, f, f0)
            u = torch.where(accept, uk, u)
            w = torch.where(accept, wk, w)
            if self._list_stale(x):
                self._rebuild(x)
            state.trajectories_done += 1
            if state.trajectories_done > self.equil_traj:
                state.accepted += int(accept.sum().item())
                state.sums.append(sums.cpu().tolist())
            if checkpoint is not None and time.monotonic() - last_save > CHECKPOINT_EVERY_S:
                state.x, state.rng = x, self.gen.get_state()
                _save(checkpoint, self.p, state)
                last_save = time.monotonic()
        state.x, state.rng = x, self.gen.get_state()

    def _kinetic(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * v.square().view(self.reps, self.n * 3).sum(1)

    def summarise(self, state: _State) -> dict:
        n, rho, T = self.n, self.p["density"], self.p["temperature"]
        volume = self.box**3
        # (trajectories, replicas, 3) -> (replicas, trajectories, 3)
        sums = torch.tensor(state.sums, dtype=torch.float64).transpose(0, 1)
        weight, energy, virial = sums.unbind(-1)
        e_mean, e_err = _block_ratio(energy / n, weight)
        v_mean, v_err = _block_ratio(virial, weight)
        trajectories = sums.shape[0] * sums.shape[1]
        return {
            "energy_per_particle": e_mean + phys.tail_energy_per_particle(rho, R_CUT),
            "energy_stderr": e_err,
            "pressure": rho * T + v_mean / (3.0 * volume) + phys.tail_pressure(rho, R_CUT),
            "pressure_stderr": v_err / (3.0 * volume),
            "acceptance": state.accepted / trajectories if trajectories else 0.0,
            "samples": trajectories,
        }


def nve_energies(params: dict, steps: int, *, device: str = "cpu") -> list[float]:
    """Plain velocity Verlet, no thermostat: the conserved energy per particle after each step.

    The conserved quantity is kinetic + truncated-and-shifted potential energy, since
    the truncated forces ignore the step at the cut-off. A check of forces and integrator.
    """
    p = LJMD().validate_params(params)
    sim = _Simulation(p, torch.device(device))
    x = sim.fresh_state().x
    v = torch.randn(x.shape, generator=sim.gen, dtype=sim.dtype).to(sim.device) * math.sqrt(p["temperature"])
    shift = 4.0 * (R_CUT**-12 - R_CUT**-6)
    sim._rebuild(x)
    f = phys.forces(x, sim.pairs, sim.box, R_CUT)
    out = []
    for _ in range(steps):
        v.add_(f, alpha=0.5 * p["dt"])
        x.add_(v, alpha=p["dt"])
        if sim._list_stale(x):
            sim._rebuild(x)
        f = phys.forces(x, sim.pairs, sim.box, R_CUT)
        v.add_(f, alpha=0.5 * p["dt"])
        u, _, inside = phys.energy_virial(x, sim.pairs, sim.reps, sim.box, R_CUT)
        total = (u - inside * shift + sim._kinetic(v)).sum() / (sim.n * sim.reps)
        out.append(float(total))
    return out


def _block_ratio(values: torch.Tensor, weights: torch.Tensor) -> tuple[float, float]:
    """Weighted mean sum(values)/sum(weights) and its standard error from block estimates.

    Both inputs are (replicas, trajectories) of per-trajectory weighted sums.
    """
    reps, length = values.shape
    per_rep = max(1, min(length, BLOCKS // reps))
    size = length // per_rep
    cut = per_rep * size
    blocks = values[:, :cut].reshape(reps * per_rep, size).sum(1) / weights[:, :cut].reshape(reps * per_rep, size).sum(1)
    mean = float(values.sum() / weights.sum())
    if blocks.numel() < 2:
        return mean, float("inf")
    return mean, float(blocks.std() / math.sqrt(blocks.numel()))


def _save(path: Path, params: dict, state: _State) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "params": params,
            "x": state.x.cpu(),
            "rng": state.rng,
            "trajectories_done": state.trajectories_done,
            "accepted": state.accepted,
            "sums": torch.tensor(state.sums, dtype=torch.float64),
        },
        buf,
    )
    atomic_write(Path(path), buf.getvalue())


def _load(path: Path, params: dict) -> _State:
    try:
        blob = torch.load(path, weights_only=True)
        if blob["params"] != params:
            raise CheckpointError(f"checkpoint: {path} was written for other parameters")
        return _State(
            x=blob["x"],
            rng=blob["rng"],
            trajectories_done=int(blob["trajectories_done"]),
            accepted=int(blob["accepted"]),
            sums=blob["sums"].tolist(),
        )
    except CheckpointError:
        raise
    except Exception as exc:  # any unpickling/shape problem means the file is unusable
        raise CheckpointError(f"checkpoint: {path} is unreadable ({type(exc).__name__})") from None
