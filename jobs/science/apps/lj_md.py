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

import math
from pathlib import Path
from typing import Callable

from jobs.science.apps.base import Needs, ParamError, ResultError
from jobs.science.apps.lj_blocks import BLOCKS, R_CUT, block_counts, block_statistics, production_trajectories
from jobs.science.apps.params import as_float, as_int, reject_unknown, require

# Agreement band: COMPARE_SIGMAS * sqrt(2) * the smaller standard error. With 32 blocks an honest
# pair is rejected with probability ~5e-6 (2e-6 per observable, the estimated errors' scatter included).
COMPARE_SIGMAS = 6.0
RESULT_FIELDS = ("energy_per_particle", "energy_stderr", "pressure", "pressure_stderr")
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
        # torch loads only where a unit runs: the head and the CLI check units without it
        from jobs.science.apps.lj_sim import simulate

        return simulate(p, device, checkpoint, should_stop)

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

