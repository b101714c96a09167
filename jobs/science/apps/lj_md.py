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

Two estimators of U/N and P, both exact for that ensemble:

- direct (liquids): besides the chain states, points along each trajectory are
  used: Verlet is a volume-preserving map, so a point k steps from an
  equilibrium start is an exact canonical sample once weighted by
  exp(-(H_k - H_0)/T).
- insertion (dilute gases): the boxes hold N-1 particles and, at every chain
  state, test particles are put in uniformly; by the potential distribution
  theorem, particle N's interaction energy psi in the N-particle ensemble has
  <psi> = <psi e^(-psi/T)>_0 / <e^(-psi/T)>_0 over those insertions, so
  U/N = <psi>/2, and likewise for the virial. In a gas the box's own U is the
  shot noise of its few contacts, slow to average away; the insertion average
  hardly depends on the configuration at all, which makes a gas unit ~10x
  cheaper for the same error bar (see _defaults).

Error bars come from up to 32 blocks of weighted sums (a block is a run of
consecutive trajectories of one box, or, with 32 boxes or more, a group of
whole boxes). Results carry their blocks, each [sum w, sum w*U, sum w*W] over
its samples (direct: U, W of a box, w the path weight; insertion: psi, w of a
test particle, weight e^(-psi/T)), so the head recomputes the means and the
standard errors instead of trusting them (verify), and two results agree only
within a band set by the smaller of their two standard errors (compare): a
host gains nothing by claiming a large error bar.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from jobs.science.apps import lj_physics as phys
from jobs.science.apps.base import CheckpointError, Needs, ParamError, Paused, ResultError
from jobs.science.apps.checkpoint import atomic_write
from jobs.science.apps.params import as_float, as_int, reject_unknown, require

R_CUT = 3.0
CHECKPOINT_EVERY_S = 30.0
# Agreement band: COMPARE_SIGMAS * sqrt(2) * the smaller standard error. With 32 blocks an honest
# pair is rejected with probability ~5e-6 (2e-6 per observable, the estimated errors' scatter included).
COMPARE_SIGMAS = 6.0
RESULT_FIELDS = ("energy_per_particle", "energy_stderr", "pressure", "pressure_stderr")
BLOCKS = 32  # most blocks a result carries
MELT_FACTOR = 2.0
VERIFY_RTOL = 1e-9  # claimed statistics vs the head's recomputation from the blocks (same arithmetic)

GAS_BELOW = 0.1  # densities below this get the dilute-gas defaults
ERR_MARGIN = 0.75  # default runs aim at this fraction of the stated error: its estimate scatters ~13%
GAS_TAU = 3.2  # time units a box needs per independent U sample (measured at T*=0.85; 2.5 at 0.9)
GAS_INSERTIONS = 4000  # test particles per box per trajectory; near the cost optimum, which is flat
GAS_TRAJECTORY = 48  # steps: 1.2 time units, the length that decorrelated a gas fastest
LIQUID_INEFFICIENCY = 1.1e-3  # stderr(U/N)^2 * simulated time of one box at rho* = 0.8, measured


def pair_integrals(temperature: float) -> tuple[float, float, float]:
    """Dilute-limit pair integrals over r < R_CUT of 4 pi r^2 f(r): f = u e^(-u/T), u^2 e^(-u/T), u^2 e^(-2u/T).

    As rho -> 0: U/N -> rho*I1/2 (within 0.5% of NIST at rho* = 0.005); pairs meet independently,
    so one box's U/N varies by rho*I2/(2N); and one test insertion's psi*e^(-psi/T) by rho*J2.
    Simpson's rule from r = 0.5, where e^(-u/T) < 1e-200.
    """
    steps, lo = 2000, 0.5
    h = (R_CUT - lo) / steps
    i1 = i2 = j2 = 0.0
    for k in range(steps + 1):
        r = lo + k * h
        inv6 = r**-6
        u = 4.0 * inv6 * (inv6 - 1.0)
        boltzmann = math.exp(-u / temperature)
        w = (1 if k in (0, steps) else 4 if k % 2 else 2) * 4.0 * math.pi * r * r * boltzmann
        i1 += w * u
        i2 += w * u * u
        j2 += w * u * u * boltzmann
    return i1 * h / 3.0, i2 * h / 3.0, j2 * h / 3.0


def _defaults(temperature: float, density: float, n: int) -> dict:
    """Effort picked from the state point so energy_stderr lands at ERR_MARGIN of its target
    (0.2% of |U/N|, at most 0.003), each regime sampled the way that reaches it cheapest.

    Gas: the box's own U/N is the shot noise of its few pairs in contact, and a box needs
    ~GAS_TAU time units per independent value (bound pairs outlive a velocity redraw about half
    the time): 2000-3600 time units x 32 boxes at NIST's gas points. Test-particle insertion
    instead asks, of every configuration, what energy a particle would have anywhere in the
    box; pair by pair that average does not depend on the configuration, so what is left is
    the insertions' own noise (rho*J2/4 per insertion, measured as modelled) and a small
    configurational part from three-body contacts (measured ~2*rho^2*GAS_TAU*I2/N per unit
    time, ~1% of the box's own). Error budget err^2 = (conf + traj_time*insertion_var/M)/time,
    solved for the simulated time of 32 boxes; M insertions per box per trajectory. Equilibration
    0.3/rho time units (several collision times: the bound-pair population must settle).
    Liquid: one box, the direct estimator; its error comes from slow collective motion: measured
    stderr^2 * time ~ 1.0e-3 at rho* = 0.776 and 1.24e-3 at 0.86 (T* = 0.85), taken as growing
    like rho^3 (LIQUID_INEFFICIENCY at 0.8), over (ERR_MARGIN * 0.003)^2: ~29000 steps of 0.0075 at 0.8.
    """
    if density < GAS_BELOW:
        i1, i2, j2 = pair_integrals(temperature)
        replicas, dt = 32, 0.025
        traj_time = GAS_TRAJECTORY * dt
        target = ERR_MARGIN * min(0.003, 0.002 * abs(density * i1 / 2.0))
        configurational = 2.0 * density**2 * GAS_TAU * i2 / n
        per_insertion = density * j2 / 4.0
        replica_time = (configurational + traj_time * per_insertion / GAS_INSERTIONS) / target**2
        trajectories = max(4, math.ceil(replica_time / (replicas * traj_time)))
        equilibration = min(50_000, max(1000, math.ceil(0.3 / (density * dt))))
        return {"replicas": replicas, "steps": trajectories * GAS_TRAJECTORY, "equilibration_steps": equilibration,
                "dt": dt, "trajectory_steps": GAS_TRAJECTORY, "skin": 2.0, "sample_every": 4,
                "insertions": GAS_INSERTIONS}
    dt = 0.0075
    liquid_time = LIQUID_INEFFICIENCY * (density / 0.8) ** 3 / (ERR_MARGIN * 0.003) ** 2
    return {"replicas": 1, "steps": math.ceil(liquid_time / dt), "equilibration_steps": 5000, "dt": dt,
            "trajectory_steps": 50, "skin": 0.5, "sample_every": 5, "insertions": 0}


@dataclass
class _State:
    """Everything a checkpoint holds: enough to continue the same run."""

    x: torch.Tensor
    rng: torch.Tensor
    blocks: torch.Tensor  # (blocks, 3) float64: sum w, sum w*U, sum w*W over each block's samples
    trajectories_done: int = 0
    accepted: int = 0


def production_trajectories(p: dict) -> int:
    """Production trajectories each replica runs."""
    return math.ceil(p["steps"] / p["trajectory_steps"])


def block_layout(p: dict) -> tuple[list[int], list[list[int]]]:
    """Which block each (replica, production trajectory) adds to, and each block's count of them.

    Returns (first block of each replica, per replica the trajectory index where each of its
    blocks starts); with 32 replicas or more a block is a group of whole replicas.
    """
    reps, length = p["replicas"], production_trajectories(p)
    if reps >= BLOCKS:
        return [r * BLOCKS // reps for r in range(reps)], [[0]] * reps
    per_rep = min(length, BLOCKS // reps)
    starts = [-(-c * length // per_rep) for c in range(per_rep)]  # ceil: chunk sizes differ by <= 1
    return [r * per_rep for r in range(reps)], [starts] * reps


def block_counts(p: dict) -> list[int]:
    """Samples (trajectories) in each block, in block order."""
    reps, length = p["replicas"], production_trajectories(p)
    first, starts = block_layout(p)
    counts = [0] * (max(first) + len(starts[-1]))
    for r in range(reps):
        edges = starts[r] + [length]
        for c in range(len(starts[r])):
            counts[first[r] + c] += edges[c + 1] - edges[c]
    return counts


def block_statistics(blocks: list[list[float]], p: dict) -> dict:
    """Means and standard errors of U/N and P from block sums; the same code runs on the host and at the head.

    Direct estimator: a block's samples are boxes, U/N = <U>/N and the box virial is <W>.
    Insertion estimator: its samples are test particles in boxes of N-1, and by the potential
    distribution theorem the energy psi and virial w of particle N obey <psi> = <psi e^(-psi/T)>_0 /
    <e^(-psi/T)>_0 over uniform insertions, and U/N = <psi>/2, W = N <w>/2 (each pair counted twice).
    """
    n, rho, temperature = p["n_particles"], p["density"], p["temperature"]
    volume = n / rho
    count = len(blocks)
    per_energy, per_virial = (0.5, 0.5 * n) if p["insertions"] else (1.0 / n, 1.0)
    weight = math.fsum(b[0] for b in blocks)
    energy = [b[1] / b[0] * per_energy for b in blocks]
    virial = [b[2] / b[0] * per_virial for b in blocks]

    def stderr(values: list[float]) -> float:
        mean = math.fsum(values) / count
        return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (count - 1) / count)

    return {
        "energy_per_particle": math.fsum(b[1] for b in blocks) / weight * per_energy
        + phys.tail_energy_per_particle(rho, R_CUT),
        "energy_stderr": stderr(energy),
        "pressure": rho * temperature + math.fsum(b[2] for b in blocks) / weight * per_virial / (3.0 * volume)
        + phys.tail_pressure(rho, R_CUT),
        "pressure_stderr": stderr(virial) / (3.0 * volume),
    }


class LJMD:
    name = "lj-md"
    version = 2
    needs = Needs(gpu=False, gpu_capable=True, min_vram_bytes=256 * 2**20, min_compute_capability=5.0)
    self_verifying = False
    default_quorum = 2
    max_result_bytes = 8192  # 32 blocks of 3 numbers, ~2.5 kB

    def params_schema(self) -> dict[str, str]:
        return {
            "temperature": "reduced temperature T* (required, 0.05..100)",
            "density": "reduced number density rho* (required, 1e-5..1.2); below 0.1 the gas defaults apply",
            "n_particles": "particles N the result is for (default 500; the box must exceed 2*(3 sigma cut-off + skin))",
            "steps": "production MD steps per box (default: from the state point, for 0.75 of the error target;"
            " gas: 48 x the trajectories that error budget needs, liquid: ~29000*(rho/0.8)^3)",
            "equilibration_steps": "MD steps per box before sampling, the first quarter at 2x temperature"
            " (default: gas 12/rho* (0.3/rho* time units), liquid 5000)",
            "replicas": "independent boxes simulated together (default 32 gas, 1 liquid)",
            "dt": "time step, reduced units (default 0.025 gas, 0.0075 liquid; HMC removes its bias)",
            "trajectory_steps": "MD steps between velocity redraws and Metropolis tests (default 48 gas, 50 liquid)",
            "sample_every": "MD steps between sampled points along a trajectory, direct estimator only (default 4 gas, 5 liquid)",
            "insertions": "test particles inserted per box at each trajectory start; 0 = direct estimator (the"
            " box's own U, N particles), >0 = insertion estimator (boxes of N-1) (default 4000 gas, 0 liquid)",
            "skin": "Verlet-list skin in sigma (default 2.0 gas, 0.5 liquid)",
            "seed": "random seed (default 0)",
        }

    def validate_params(self, params: dict) -> dict:
        reject_unknown(params, set(self.params_schema()))
        temperature = as_float(params, "temperature", require(params, "temperature"), lo=0.05, hi=100.0)
        density = as_float(params, "density", require(params, "density"), lo=1e-5, hi=1.2)
        n = as_int(params, "n_particles", 500, lo=32, hi=100_000)
        d = _defaults(temperature, density, n)
        skin = as_float(params, "skin", d["skin"], lo=0.05, hi=3.0)
        box = (n / density) ** (1.0 / 3.0)
        if box < 2.0 * (R_CUT + skin):
            raise ParamError(
                f"n_particles: box edge {box:.2f} must exceed 2*(cut-off+skin) = {2 * (R_CUT + skin):.2f}; use more particles"
            )
        p = {
            "temperature": temperature,
            "density": density,
            "n_particles": n,
            "steps": as_int(params, "steps", d["steps"], lo=1, hi=10**9),
            "equilibration_steps": as_int(params, "equilibration_steps", d["equilibration_steps"], lo=0, hi=10**9),
            "replicas": as_int(params, "replicas", d["replicas"], lo=1, hi=4096),
            "dt": as_float(params, "dt", d["dt"], lo=1e-5, hi=0.05),
            "trajectory_steps": as_int(params, "trajectory_steps", d["trajectory_steps"], lo=1, hi=100_000),
            "sample_every": as_int(params, "sample_every", d["sample_every"], lo=1, hi=100_000),
            "insertions": as_int(params, "insertions", d["insertions"], lo=0, hi=1_000_000),
            "skin": skin,
            "seed": as_int(params, "seed", 0, lo=0, hi=2**63 - 1),
        }

        if p["replicas"] * production_trajectories(p) < 2:
            raise ParamError("steps: an error bar needs 2 blocks; run more than one trajectory_steps or 2 replicas")
        return p

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
        extra = sorted(set(result) - set(RESULT_FIELDS) - {"acceptance", "samples", "blocks"})
        if extra:
            raise ResultError(f"{extra[0]}: unexpected field in lj-md result")
        for key in (*RESULT_FIELDS, "acceptance"):
            if not _is_number(result.get(key)):
                raise ResultError(f"{key}: expected a number, got {result.get(key)!r}")
        samples = result.get("samples")
        if isinstance(samples, bool) or not isinstance(samples, int):
            raise ResultError(f"samples: expected an integer, got {samples!r}")
        blocks = result.get("blocks")
        if not isinstance(blocks, list) or not 2 <= len(blocks) <= BLOCKS:
            raise ResultError(f"blocks: expected a list of 2..{BLOCKS} blocks")
        for k, block in enumerate(blocks):
            if not isinstance(block, list) or len(block) != 3 or not all(_is_number(v) for v in block):
                raise ResultError(f"blocks: item {k} is not [sum w, sum w*U, sum w*W] of 3 numbers")

    def compare(self, a: dict, b: dict) -> bool:
        """Agree when both observables differ by less than COMPARE_SIGMAS * sqrt(2) * the smaller stderr.

        Taking the smaller error bar means a host cannot widen the band by claiming a large one;
        claiming a small one only narrows it against itself.
        """
        if a == b:
            return True
        for value, err in (("energy_per_particle", "energy_stderr"), ("pressure", "pressure_stderr")):
            band = COMPARE_SIGMAS * math.sqrt(2.0) * min(a[err], b[err])
            band += 1e-12 * (abs(a[value]) + abs(b[value]))  # rounding only
            if not abs(a[value] - b[value]) <= band:
                return False
        return True

    def verify(self, params: dict, result: dict) -> bool:
        """The claimed statistics are exactly what the blocks give, and the blocks are what these params make."""
        p = self.validate_params(params)
        blocks = result["blocks"]
        counts = block_counts(p)
        if len(blocks) != len(counts) or result["samples"] != p["replicas"] * production_trajectories(p):
            return False
        if not all(math.isfinite(v) for block in blocks for v in block):
            return False
        # direct: every sampled trajectory adds its chain state at weight exactly 1, path points
        # at weight > 0; insertion: every weight exp(-psi/T) is > 0
        least = [0.0] * len(counts) if p["insertions"] else [c * (1.0 - 1e-12) for c in counts]
        if any(not (block[0] >= floor and block[0] > 0.0) for block, floor in zip(blocks, least)):
            return False
        if not 0.0 <= result["acceptance"] <= 1.0:
            return False
        expected = block_statistics(blocks, p)
        for key in RESULT_FIELDS:
            claimed, value = result[key], expected[key]
            if not (math.isfinite(claimed) and math.isfinite(value)):
                return False
            if not abs(claimed - value) <= VERIFY_RTOL * abs(value) + 1e-300:
                return False
        return expected["energy_stderr"] > 0.0 and expected["pressure_stderr"] > 0.0


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


class _Simulation:
    def __init__(self, p: dict, device: torch.device) -> None:
        self.p = p
        self.device = device
        # float64: the Metropolis test takes a small difference of two large energies
        self.dtype = torch.float64
        self.insertions = p["insertions"]
        # the insertion estimator puts particle N in by test: the boxes hold the other N-1
        self.n = p["n_particles"] - (1 if self.insertions else 0)
        self.reps = p["replicas"]
        self.box = (p["n_particles"] / p["density"]) ** (1.0 / 3.0)
        self.r_list = R_CUT + p["skin"]
        self.traj_steps = p["trajectory_steps"]
        self.equil_traj = math.ceil(p["equilibration_steps"] / self.traj_steps)
        self.total_traj = self.equil_traj + production_trajectories(p)
        # random numbers come from a CPU generator so a run is reproducible on any device
        self.gen = torch.Generator(device="cpu")
        first, starts = block_layout(p)
        self.block_first = torch.tensor(first, dtype=torch.long)
        self.block_starts = starts
        self.n_blocks = len(block_counts(p))

    def fresh_state(self) -> _State:
        self.gen.manual_seed(self.p["seed"])
        lattice = phys.fcc_lattice(self.n, self.box, self.dtype)
        x = torch.cat([lattice] * self.reps, dim=0).to(self.device)
        return _State(x=x, rng=self.gen.get_state(), blocks=torch.zeros(self.n_blocks, 3, dtype=torch.float64))

    def _block_ids(self, trajectory: int) -> torch.Tensor:
        """Block of each replica for its production trajectory number `trajectory`."""
        chunk = [sum(1 for s in starts[1:] if s <= trajectory) for starts in self.block_starts]
        return self.block_first + torch.tensor(chunk, dtype=torch.long)

    def _rebuild(self, x: torch.Tensor) -> None:
        self.pairs = phys.build_pairs(x, self.reps, self.box, self.r_list)
        self.x_ref = x.clone()

    def _list_stale(self, x: torch.Tensor) -> bool:
        moved = (x - self.x_ref).square_() @ torch.ones(3, dtype=x.dtype, device=x.device)
        return bool((moved.max() > (0.5 * (self.r_list - R_CUT)) ** 2).item())

    def _forces(self, x: torch.Tensor, observe: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return phys.forces_energy_virial(x, self.pairs, self.reps, R_CUT, observe=observe)

    def advance(self, state: _State, checkpoint: Path | None, should_stop: Callable[[], bool] | None) -> None:
        dt, every = self.p["dt"], self.p["sample_every"]
        self.gen.set_state(state.rng)
        x = state.x.to(self.device)
        self._rebuild(x)
        f, observed = self._forces(x, True)
        u, w = observed.unbind(1)
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
            production = state.trajectories_done - self.equil_traj
            if self.insertions:
                sums = self._insert(x, T) if production >= 0 else None
            else:
                # weighted path sums (sum wt, sum wt*U, sum wt*W), starting with the chain state itself
                sums = torch.stack([torch.ones_like(u), u, w], dim=1)
            v = (torch.randn(x.shape, generator=self.gen, dtype=self.dtype) * math.sqrt(T)).to(self.device)
            h0 = u + self._kinetic(v)
            x0, f0 = x.clone(), f
            for step in range(1, self.traj_steps + 1):
                # in place, and positions are never wrapped: minimum image copes with any offset
                v.add_(f, alpha=0.5 * dt)
                x.add_(v, alpha=dt)
                if self._list_stale(x):
                    self._rebuild(x)
                last = step == self.traj_steps
                sample = last or (not self.insertions and step % every == 0)
                f, observed = self._forces(x, sample)
                v.add_(f, alpha=0.5 * dt)
                if sample:
                    uk, wk = observed.unbind(1)
                    hk = uk + self._kinetic(v)
                    if not self.insertions:
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
            if production >= 0:
                state.accepted += int(accept.sum().item())
                # on the CPU, in a fixed order: a resumed run adds up exactly like an uninterrupted one
                state.blocks.index_add_(0, self._block_ids(production), sums.cpu())
            if checkpoint is not None and time.monotonic() - last_save > CHECKPOINT_EVERY_S:
                state.x, state.rng = x, self.gen.get_state()
                _save(checkpoint, self.p, state)
                last_save = time.monotonic()
        state.x, state.rng = x, self.gen.get_state()

    def _insert(self, x: torch.Tensor, T: float) -> torch.Tensor:
        """Per box (sum e, sum e*psi, sum e*w), e = exp(-psi/T), over uniform test insertions."""
        m = self.insertions
        points = (torch.rand(self.reps * m, 3, generator=self.gen, dtype=self.dtype) * self.box).to(self.device)
        psi, virial = phys.insertion_energy_virial(x, self.reps, self.box, R_CUT, points)
        # a point on top of a particle weighs exp(-huge) = 0; clamp so 0 * inf never makes a NaN
        psi.clamp_(max=1e4)
        virial.clamp_(min=-1e12, max=1e12)
        e = torch.exp(-psi / T)
        owner = torch.arange(self.reps, device=self.device).repeat_interleave(m)
        per_point = torch.stack([e, e * psi, e * virial], dim=1)
        return torch.zeros(self.reps, 3, dtype=self.dtype, device=self.device).index_add_(0, owner, per_point)

    def _kinetic(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * v.square().view(self.reps, self.n * 3).sum(1)

    def summarise(self, state: _State) -> dict:
        blocks = state.blocks.tolist()
        samples = self.reps * production_trajectories(self.p)
        return {
            **block_statistics(blocks, self.p),
            "acceptance": state.accepted / samples,
            "samples": samples,
            "blocks": blocks,
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
    f, _ = sim._forces(x, False)
    out = []
    for _ in range(steps):
        v.add_(f, alpha=0.5 * p["dt"])
        x.add_(v, alpha=p["dt"])
        if sim._list_stale(x):
            sim._rebuild(x)
        f, _ = sim._forces(x, False)
        v.add_(f, alpha=0.5 * p["dt"])
        u, _, inside = phys.energy_virial(x, sim.pairs, sim.reps, R_CUT)
        total = (u - inside * shift + sim._kinetic(v)).sum() / (sim.n * sim.reps)
        out.append(float(total))
    return out


def _save(path: Path, params: dict, state: _State) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "params": params,
            "x": state.x.cpu(),
            "rng": state.rng,
            "trajectories_done": state.trajectories_done,
            "accepted": state.accepted,
            "blocks": state.blocks,
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
            blocks=blob["blocks"].to(torch.float64),
            trajectories_done=int(blob["trajectories_done"]),
            accepted=int(blob["accepted"]),
        )
    except CheckpointError:
        raise
    except Exception as exc:  # any unpickling/shape problem means the file is unusable
        raise CheckpointError(f"checkpoint: {path} is unreadable ({type(exc).__name__})") from None
