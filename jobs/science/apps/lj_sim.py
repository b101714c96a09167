"""lj-md's simulation in PyTorch (the method is in lj_md's docstring): one run of
hybrid Monte Carlo over R boxes at once, its blocks, and its checkpoints. Only a
PC running a unit imports this, so only it loads torch.
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
from jobs.science.apps.base import CheckpointError, Paused
from jobs.science.apps.checkpoint import atomic_write
from jobs.science.apps.lj_blocks import R_CUT, block_counts, block_layout, block_statistics, production_trajectories

CHECKPOINT_EVERY_S = 30.0
MELT_FACTOR = 2.0


def simulate(p: dict, device: str, checkpoint: Path | None, should_stop: Callable[[], bool] | None) -> dict:
    """One unit's run on validated params, from its checkpoint when there is one."""
    sim = _Simulation(p, torch.device(device))
    state = _load(checkpoint, p) if checkpoint is not None and Path(checkpoint).exists() else sim.fresh_state()
    sim.advance(state, checkpoint, should_stop)
    return sim.summarise(state)


@dataclass
class _State:
    """Everything a checkpoint holds: enough to continue the same run."""

    x: torch.Tensor
    rng: torch.Tensor
    blocks: torch.Tensor  # (blocks, 3) float64: sum w, sum w*U, sum w*W over each block's samples
    trajectories_done: int = 0
    accepted: int = 0


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


def nve_energies(p: dict, steps: int, *, device: str = "cpu") -> list[float]:
    """Plain velocity Verlet, no thermostat: the conserved energy per particle after each step.

    The conserved quantity is kinetic + truncated-and-shifted potential energy, since
    the truncated forces ignore the step at the cut-off. A check of forces and integrator.
    """
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
