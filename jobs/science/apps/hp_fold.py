"""`hp-fold`: 2D HP lattice protein folding by replica-exchange Monte Carlo with pull moves.

Model: a chain of H (hydrophobic) and P (polar) residues on the square lattice,
energy -1 per pair of H residues that are lattice neighbours but not chain
neighbours. Moves are pull moves (Lesh, Mitzenmacher & Whitesides 2003), which
are complete and local, plus end pulls; temperatures are coupled by replica
exchange (as in Thachuk, Shmygelska & Hoos 2007). The best conformation seen
by any replica is the result.

Result: {"energy": int, "conformation": [[x, y], ...]} - absolute lattice
coordinates of every residue in chain order, residue 0 at the origin.

hp-fold is self-verifying: verify() recomputes the energy from the
conformation, so a result cannot claim more than it shows. Two different seeds
legitimately find different conformations, so compare() accepts two results
whenever their energies are equal.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable

from jobs.science.apps.base import CheckpointError, Needs, ParamError, Paused, ResultError
from jobs.science.apps.checkpoint import atomic_write
from jobs.science.apps.params import as_float, as_int, reject_unknown, require

MAX_LENGTH = 1000
W = 1 << 21  # site = x * W + y: integer keys keep the occupancy dict fast
STEPS = (1, -1, W, -W)
ADJACENT = frozenset(STEPS)
CHECKPOINT_EVERY_SWEEPS = 200


def _site(x: int, y: int) -> int:
    return x * W + y


def _xy(site: int) -> tuple[int, int]:
    x, y = divmod(site + W // 2, W)
    return x, y - W // 2


class HPFold:
    name = "hp-fold"
    version = 1
    needs = Needs()
    self_verifying = True
    max_result_bytes = 64 + 24 * MAX_LENGTH

    def params_schema(self) -> dict[str, str]:
        return {
            "sequence": f"residues, letters H and P only (required, 2..{MAX_LENGTH})",
            "seed": "random seed (default 0)",
            "sweeps": "Monte Carlo sweeps per replica, one sweep = len(sequence) move attempts (default 4000)",
            "replicas": "temperatures in the replica-exchange ladder (default 6)",
            "t_min": "lowest temperature (default 0.25)",
            "t_max": "highest temperature (default 1.2)",
        }

    def validate_params(self, params: dict) -> dict:
        reject_unknown(params, set(self.params_schema()))
        seq = require(params, "sequence")
        if not isinstance(seq, str) or not seq:
            raise ParamError(f"sequence: expected a non-empty string of H and P, got {seq!r}")
        seq = seq.upper()
        bad = sorted(set(seq) - {"H", "P"})
        if bad:
            raise ParamError(f"sequence: expected only H and P, found {bad[0]!r}")
        if not 2 <= len(seq) <= MAX_LENGTH:
            raise ParamError(f"sequence: expected 2..{MAX_LENGTH} residues, got {len(seq)}")
        t_min = as_float(params, "t_min", 0.25, lo=0.01, hi=100.0)
        t_max = as_float(params, "t_max", 1.2, lo=t_min, hi=100.0)
        return {
            "sequence": seq,
            "seed": as_int(params, "seed", 0, lo=0, hi=2**63 - 1),
            "sweeps": as_int(params, "sweeps", 4000, lo=1, hi=10**8),
            "replicas": as_int(params, "replicas", 6, lo=1, hi=64),
            "t_min": t_min,
            "t_max": t_max,
        }

    def flops(self, params: dict) -> float:
        p = self.validate_params(params)
        # ~100 interpreter operations per move attempt
        return 100.0 * p["sweeps"] * p["replicas"] * len(p["sequence"])

    def run(
        self,
        params: dict,
        *,
        device: str = "cpu",
        checkpoint: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict:
        p = self.validate_params(params)
        search = _Search(p)
        if checkpoint is not None and Path(checkpoint).exists():
            search.restore(_load(Path(checkpoint), p))
        search.run(checkpoint, should_stop)
        return search.result()

    def check_result(self, result: object) -> None:
        if not isinstance(result, dict):
            raise ResultError(f"result: expected a JSON object, got {type(result).__name__}")
        extra = sorted(set(result) - {"energy", "conformation"})
        if extra:
            raise ResultError(f"{extra[0]}: unexpected field in hp-fold result")
        energy = result.get("energy")
        if isinstance(energy, bool) or not isinstance(energy, int):
            raise ResultError(f"energy: expected an integer, got {energy!r}")
        conf = result.get("conformation")
        if not isinstance(conf, list) or not 2 <= len(conf) <= MAX_LENGTH:
            raise ResultError(f"conformation: expected a list of 2..{MAX_LENGTH} [x, y] pairs")
        for k, point in enumerate(conf):
            if (
                not isinstance(point, list)
                or len(point) != 2
                or any(isinstance(c, bool) or not isinstance(c, int) for c in point)
            ):
                raise ResultError(f"conformation: item {k} is not an [x, y] pair of integers")

    def compare(self, a: dict, b: dict) -> bool:
        # stochastic search: different seeds find different folds; equal energy is agreement
        return a["energy"] == b["energy"]

    def verify(self, params: dict, result: dict) -> bool:
        seq = self.validate_params(params)["sequence"]
        conf = result["conformation"]
        if len(conf) != len(seq):
            return False
        points = [tuple(p) for p in conf]
        if len(set(points)) != len(points):
            return False  # not self-avoiding
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            if abs(x0 - x1) + abs(y0 - y1) != 1:
                return False  # broken chain
        return energy_of(seq, points) == result["energy"]


def energy_of(sequence: str, points: list[tuple[int, int]]) -> int:
    """-1 per H-H pair on neighbouring lattice sites that are not chain neighbours."""
    where = {p: k for k, p in enumerate(points)}
    contacts = 0
    for k, (x, y) in enumerate(points):
        if sequence[k] != "H":
            continue
        for nb in ((x + 1, y), (x, y + 1)):  # each unordered pair once
            j = where.get(nb)
            if j is not None and sequence[j] == "H" and abs(j - k) > 1:
                contacts += 1
    return -contacts


class _Replica:
    __slots__ = ("pos", "occ", "energy")

    def __init__(self, pos: list[int], is_h: list[bool]) -> None:
        self.pos = pos
        self.occ = {s: k for k, s in enumerate(pos)}
        self.energy = energy_of("".join("H" if h else "P" for h in is_h), [_xy(s) for s in pos])


class _Search:
    def __init__(self, p: dict) -> None:
        self.p = p
        self.seq = p["sequence"]
        self.n = len(self.seq)
        self.is_h = [c == "H" for c in self.seq]
        k = p["replicas"]
        ratio = (p["t_max"] / p["t_min"]) ** (1.0 / max(1, k - 1))
        self.temps = [p["t_min"] * ratio**r for r in range(k)]
        self.rng = random.Random(p["seed"])
        self.replicas = [_Replica([_site(x, 0) for x in range(self.n)], self.is_h) for _ in range(k)]
        self.sweeps_done = 0
        self.best_energy = self.replicas[0].energy
        self.best_pos = list(self.replicas[0].pos)

    def restore(self, blob: dict) -> None:
        self.sweeps_done = blob["sweeps_done"]
        self.best_energy = blob["best_energy"]
        self.best_pos = [_site(x, y) for x, y in blob["best"]]
        self.replicas = [_Replica([_site(x, y) for x, y in conf], self.is_h) for conf in blob["replicas"]]
        self.rng.setstate(_tuplify(blob["rng"]))

    def snapshot(self) -> dict:
        return {
            "params": self.p,
            "sweeps_done": self.sweeps_done,
            "best_energy": self.best_energy,
            "best": [_xy(s) for s in self.best_pos],
            "replicas": [[_xy(s) for s in r.pos] for r in self.replicas],
            "rng": self.rng.getstate(),
        }

    def run(self, checkpoint: Path | None, should_stop: Callable[[], bool] | None) -> None:
        while self.sweeps_done < self.p["sweeps"]:
            if should_stop is not None and should_stop():
                if checkpoint is not None:
                    _save(checkpoint, self.snapshot())
                raise Paused(f"hp-fold paused after {self.sweeps_done}/{self.p['sweeps']} sweeps")
            for rep, temp in zip(self.replicas, self.temps):
                self._sweep(rep, temp)
            self._exchange()
            self.sweeps_done += 1
            if checkpoint is not None and self.sweeps_done % CHECKPOINT_EVERY_SWEEPS == 0:
                _save(checkpoint, self.snapshot())

    def result(self) -> dict:
        x0, y0 = _xy(self.best_pos[0])
        return {
            "energy": self.best_energy,
            "conformation": [[x - x0, y - y0] for x, y in map(_xy, self.best_pos)],
        }

    def _exchange(self) -> None:
        reps, temps, rng = self.replicas, self.temps, self.rng
        start = self.sweeps_done & 1  # alternate even/odd neighbour pairs
        for a in range(start, len(reps) - 1, 2):
            b = a + 1
            arg = (1.0 / temps[a] - 1.0 / temps[b]) * (reps[a].energy - reps[b].energy)
            if arg >= 0 or rng.random() < math.exp(arg):
                reps[a], reps[b] = reps[b], reps[a]

    def _sweep(self, rep: _Replica, temp: float) -> None:
        n, rng = self.n, self.rng
        pos, occ = rep.pos, rep.occ
        accept_up = [1.0] + [math.exp(-d / temp) for d in range(1, 2 * n + 4)]
        getrandbits, random_ = rng.getrandbits, rng.random
        energy = rep.energy
        for _ in range(n):
            bits = getrandbits(32)
            i = bits % n
            f = 1 if (bits >> 20) & 1 else -1  # followers are i+f, i+2f, ...
            moves = self._pull(pos, occ, i, f, bits >> 21)
            if moves is None:
                continue
            moved = {k for k, _ in moves}
            before = self._contacts(pos, occ, moves, moved)
            old = [(k, pos[k]) for k, _ in moves]
            for k, _ in old:
                del occ[pos[k]]
            for k, s in moves:
                occ[s] = k
                pos[k] = s
            d_e = (before - self._contacts(pos, occ, moves, moved)) // 2
            if d_e <= 0 or random_() < accept_up[d_e]:
                energy += d_e
                if energy < self.best_energy:
                    self.best_energy = energy
                    self.best_pos = list(pos)
                continue
            for k, _ in moves:
                del occ[pos[k]]
            for k, s in old:
                occ[s] = k
                pos[k] = s
        rep.energy = energy

    def _contacts(self, pos: list[int], occ: dict, moves: list, moved: set) -> int:
        """Twice the H-H contacts that involve a moved residue (pairs of two moved ones count once per side)."""
        is_h = self.is_h
        total = 0
        for k, _ in moves:
            if not is_h[k]:
                continue
            s = pos[k]
            for step in STEPS:
                j = occ.get(s + step)
                if j is not None and is_h[j] and (j - k > 1 or k - j > 1):
                    total += 1 if j in moved else 2
        return total

    def _pull(self, pos: list[int], occ: dict, i: int, f: int, bits: int) -> list[tuple[int, int]] | None:
        """A pull move of residue i, followers i+f, i+2f, ...; None if the chosen move is blocked."""
        n = self.n
        here = pos[i]
        anchor = i - f
        nxt = i + f
        if 0 <= anchor < n:
            bond = here - pos[anchor]
            perp = W if bond == 1 or bond == -1 else 1
            if bits & 1:
                perp = -perp
            to = pos[anchor] + perp  # L: next to the anchor, diagonal to residue i
            if to in occ:
                return None
            if not 0 <= nxt < n:
                return [(i, to)]
            corner = here + perp  # C: next to both L and residue i
            if pos[nxt] == corner:
                return [(i, to)]
            if corner in occ:
                return None
        else:  # chain end: move it two free steps away and drag the chain after it
            if not 0 <= nxt < n:
                return None
            corner = here + STEPS[bits & 3]
            to = corner + STEPS[(bits >> 2) & 3]
            if corner in occ or to in occ or to == corner:
                return None
        moves = [(i, to), (nxt, corner)]
        prev = corner
        k = nxt + f
        while 0 <= k < n:
            if pos[k] - prev in ADJACENT:
                break
            prev = pos[k - 2 * f]
            moves.append((k, prev))
            k += f
        return moves


def _tuplify(value: object) -> object:
    """JSON turns the tuples of random.getstate() into lists; setstate needs tuples back."""
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _save(path: Path, snapshot: dict) -> None:
    atomic_write(Path(path), json.dumps(snapshot).encode())


def _load(path: Path, params: dict) -> dict:
    try:
        blob = json.loads(path.read_text())
        if blob["params"] != params:
            raise CheckpointError(f"checkpoint: {path} was written for other parameters")
        return blob
    except CheckpointError:
        raise
    except Exception as exc:  # unparsable or missing keys: the file is unusable
        raise CheckpointError(f"checkpoint: {path} is unreadable ({type(exc).__name__})") from None
