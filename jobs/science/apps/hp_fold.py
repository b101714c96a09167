"""`hp-fold`: 2D HP lattice protein folding by replica-exchange Monte Carlo with pull moves.

Model: a chain of H (hydrophobic) and P (polar) residues on the square lattice,
energy -1 per pair of H residues that are lattice neighbours but not chain
neighbours. Moves are pull moves (Lesh, Mitzenmacher & Whitesides 2003), which
are complete and local, plus end pulls; temperatures are coupled by replica
exchange (as in Thachuk, Shmygelska & Hoos 2007). The best conformation seen
by any replica is the result.

Result: {"energy": int, "conformation": [[x, y], ...]} - absolute lattice
coordinates of every residue in chain order, residue 0 at the origin.

Replication. verify() recomputes the energy from the conformation, so a result
cannot claim more than it shows; but a valid fold is no proof that the search
was run (a straight chain is valid). So a unit is replicated (default_quorum 2)
and compare() demands identical results. That is fair to honest hosts because
the search is a pure function of the parameters, seed included: one Mersenne
Twister stream drives every choice, acceptance tests compare against tables
built with + - * / only (libm's exp may differ in the last bit between
machines), and a checkpoint holds the whole state, generator included, so a
paused and resumed run ends exactly where an uninterrupted one does. A host
that skips the work, or copies a good fold found under another seed, disagrees.
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
LN2 = 0.6931471805599453


def _site(x: int, y: int) -> int:
    return x * W + y


def _xy(site: int) -> tuple[int, int]:
    x, y = divmod(site + W // 2, W)
    return x, y - W // 2


# The effort rule (see default_effort); the params schema prints it.
EFFORT_ATTEMPTS_AT_64 = 6_000_000  # move attempts, all replicas, for a 64-residue chain
EFFORT_POWER = 4  # attempts grow as length**4 ...
EFFORT_MIN_ATTEMPTS, EFFORT_MAX_ATTEMPTS = 200_000, 400_000_000  # ... within these bounds
EFFORT_T_MIN, EFFORT_T_MAX = 0.3, 0.5


def default_effort(length: int) -> dict:
    """The search effort a chain of `length` residues gets unless the params say otherwise.

    Measured with 64-seed batches on the standard 2D benchmarks (benchmarks/science_accuracy.py):
    what matters for a batch is the chance that one unit hits the ground state early, and that
    chance, at fixed effort, falls steeply with length; so the effort grows as length**4 (a 20-mer
    still takes well under a second). Few replicas on a narrow, cold ladder hit early most often:
    at T = 0.3 a 100-mer sits ~4 above its ground state, below 0.25 it freezes, and a hot
    replica (the old 1.2) mostly wastes its moves on unfolded chains. More residues need more
    rungs for exchanges to keep being accepted (~25% at these settings).
    """
    replicas = 2 if length <= 30 else 3 if length <= 70 else 4
    # integers throughout: the same sweeps on every machine
    attempts = EFFORT_ATTEMPTS_AT_64 * length**EFFORT_POWER // 64**EFFORT_POWER
    attempts = min(EFFORT_MAX_ATTEMPTS, max(EFFORT_MIN_ATTEMPTS, attempts))
    return {"sweeps": -(-attempts // (replicas * length)), "replicas": replicas,
            "t_min": EFFORT_T_MIN, "t_max": EFFORT_T_MAX}


class HPFold:
    name = "hp-fold"
    version = 2
    needs = Needs()
    self_verifying = True
    default_quorum = 2
    max_result_bytes = 64 + 24 * MAX_LENGTH

    def params_schema(self) -> dict[str, str]:
        return {
            "sequence": f"residues, letters H and P only (required, 2..{MAX_LENGTH})",
            "seed": "random seed (default 0)",
            "sweeps": "Monte Carlo sweeps per replica, one sweep = len(sequence) move attempts (default by length:"
            f" sweeps * replicas * length = {EFFORT_ATTEMPTS_AT_64:,} * (length/64)^{EFFORT_POWER} move attempts,"
            f" at least {EFFORT_MIN_ATTEMPTS:,}, at most {EFFORT_MAX_ATTEMPTS:,})",
            "replicas": "temperatures in the replica-exchange ladder (default by length: 2 up to 30 residues,"
            " 3 up to 70, 4 above)",
            "t_min": f"lowest temperature (default {EFFORT_T_MIN})",
            "t_max": f"highest temperature, the ladder geometric in between (default {EFFORT_T_MAX})",
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
        d = default_effort(len(seq))
        t_min = as_float(params, "t_min", d["t_min"], lo=0.01, hi=100.0)
        t_max = as_float(params, "t_max", max(d["t_max"], t_min), lo=t_min, hi=100.0)
        return {
            "sequence": seq,
            "seed": as_int(params, "seed", 0, lo=0, hi=2**63 - 1),
            "sweeps": as_int(params, "sweeps", d["sweeps"], lo=1, hi=10**8),
            "replicas": as_int(params, "replicas", d["replicas"], lo=1, hi=64),
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
        # replicas of a unit share the seed and the search is deterministic: honest copies are identical
        return a["energy"] == b["energy"] and a["conformation"] == b["conformation"]

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


def exp_exact(x: float) -> float:
    """e**x from IEEE + - * / and a power-of-two scaling only: the same bits on every machine."""
    if x < -700.0:
        return 0.0
    m = round(x / LN2)
    r = x - m * LN2  # |r| <= ln2/2; the rounding of LN2 does not matter, only that it is fixed
    term, total = 1.0, 1.0
    for k in range(1, 24):
        term = term * r / k
        total += term
    return math.ldexp(total, m)


def log_exact(x: float) -> float:
    """ln(x) for x > 0, deterministic like exp_exact (frexp is exact; atanh series for the mantissa)."""
    mant, e = math.frexp(x)  # x = mant * 2**e, mant in [0.5, 1)
    s = (mant - 1.0) / (mant + 1.0)  # |s| <= 1/3
    s2, term, total = s * s, s, 0.0
    for k in range(1, 80, 2):
        total += term / k
        term *= s2
    return 2.0 * total + e * LN2


def ladder(t_min: float, t_max: float, k: int) -> list[float]:
    """k temperatures in geometric progression from t_min to t_max."""
    if k == 1:
        return [t_min]
    step = log_exact(t_max / t_min) / (k - 1)
    return [t_min * exp_exact(r * step) for r in range(k)]


class _Replica:
    __slots__ = ("pos", "occ", "energy")

    def __init__(self, pos: list[int], sequence: str) -> None:
        self.pos = pos
        self.occ = {s: k for k, s in enumerate(pos)}
        self.energy = energy_of(sequence, [_xy(s) for s in pos])


class _Search:
    def __init__(self, p: dict) -> None:
        self.p = p
        self.seq = p["sequence"]
        self.n = len(self.seq)
        # one spare False at the end: occ.get(site, -1) of an empty site reads is_h[-1]
        self.is_h = [c == "H" for c in self.seq] + [False]
        k = p["replicas"]
        self.temps = ladder(p["t_min"], p["t_max"], k)
        # an uphill move costs at most the contacts of the moved residues: 2 each, 3 at the ends
        self.accept = [[exp_exact(-d / t) for d in range(2 * self.n + 4)] for t in self.temps]
        self.rng = random.Random(p["seed"])
        self.replicas = [_Replica([_site(x, 0) for x in range(self.n)], self.seq) for _ in range(k)]
        self.sweeps_done = 0
        self.best_energy = self.replicas[0].energy
        self.best_pos = list(self.replicas[0].pos)

    def restore(self, blob: dict) -> None:
        self.sweeps_done = blob["sweeps_done"]
        self.best_energy = blob["best_energy"]
        self.best_pos = [_site(x, y) for x, y in blob["best"]]
        self.replicas = [_Replica([_site(x, y) for x, y in conf], self.seq) for conf in blob["replicas"]]
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
            for r in range(len(self.replicas)):
                self._sweep(r)
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
            if arg >= 0 or rng.random() < exp_exact(arg):
                reps[a], reps[b] = reps[b], reps[a]

    def _sweep(self, r: int) -> None:
        """len(sequence) pull-move attempts on the replica at ladder rung r."""
        n, is_h, accept = self.n, self.is_h, self.accept[r]
        rep = self.replicas[r]
        pos, occ = rep.pos, rep.occ
        getrandbits, random_ = self.rng.getrandbits, self.rng.random
        energy = rep.energy
        for _ in range(n):
            bits = getrandbits(32)
            i = bits % n
            f = 1 if (bits >> 20) & 1 else -1  # followers are i+f, i+2f, ...
            # the pull move of _pull, inlined: most attempts end at a blocked site, and a call
            # per attempt cost a tenth of the search
            here = pos[i]
            anchor = i - f
            nxt = i + f
            if 0 <= anchor < n:
                bond = here - pos[anchor]
                perp = W if bond == 1 or bond == -1 else 1
                if bits & (1 << 21):
                    perp = -perp
                to = pos[anchor] + perp
                if to in occ:
                    continue
                corner = here + perp
                if not 0 <= nxt < n or pos[nxt] == corner:
                    new = [to]
                elif corner in occ:
                    continue
                else:
                    new = _drag(pos, n, i, f, to, corner)
            elif 0 <= nxt < n:
                corner = here + STEPS[(bits >> 21) & 3]
                to = corner + STEPS[(bits >> 23) & 3]
                if corner in occ or to in occ:
                    continue
                new = _drag(pos, n, i, f, to, corner)
            else:
                continue
            if len(new) == 1:
                # one residue to a site diagonal from its old one: count its H neighbours at both
                # sites without moving it (its chain neighbours touch both, so they cancel)
                s, t = pos[i], new[0]
                d_e = 0
                if is_h[i]:
                    get = occ.get
                    d_e = (
                        is_h[get(s + 1, -1)] + is_h[get(s - 1, -1)] + is_h[get(s + W, -1)] + is_h[get(s - W, -1)]
                        - is_h[get(t + 1, -1)] - is_h[get(t - 1, -1)] - is_h[get(t + W, -1)] - is_h[get(t - W, -1)]
                    )
                if d_e <= 0 or random_() < accept[d_e]:
                    del occ[s]
                    occ[t] = i
                    pos[i] = t
                    energy += d_e
                    if energy < self.best_energy:
                        self.best_energy = energy
                        self.best_pos = list(pos)
                continue
            last = i + (len(new) - 1) * f
            lo, hi = (i, last) if f == 1 else (last, i)
            before = _contacts(pos, occ, is_h, lo, hi)
            old = pos[lo : hi + 1]
            for s in old:
                del occ[s]
            k = i
            for s in new:
                pos[k] = s
                occ[s] = k
                k += f
            d_e = (before - _contacts(pos, occ, is_h, lo, hi)) >> 1
            if d_e <= 0 or random_() < accept[d_e]:
                energy += d_e
                if energy < self.best_energy:
                    self.best_energy = energy
                    self.best_pos = list(pos)
                continue
            for s in new:
                del occ[s]
            pos[lo : hi + 1] = old
            for k, s in enumerate(old, lo):
                occ[s] = k
        rep.energy = energy


def _contacts(pos: list[int], occ: dict, is_h: list[bool], lo: int, hi: int) -> int:
    """Twice the H-H lattice contacts that involve a residue in lo..hi (a pair inside counts once per side).

    Chain neighbours are counted too: they touch before and after any move, so they cancel in a difference.
    """
    total = 0
    get = occ.get
    for k in range(lo, hi + 1):
        if is_h[k]:
            s = pos[k]
            for j in (get(s + 1, -1), get(s - 1, -1), get(s + W, -1), get(s - W, -1)):
                if is_h[j]:
                    total += 1 if lo <= j <= hi else 2
    return total


def _drag(pos: list[int], n: int, i: int, f: int, to: int, corner: int) -> list[int]:
    """New sites of residues i, i+f, ... when i goes to `to` and i+f to `corner`: each later residue
    takes the old site of the one two before it, until one already touches its new neighbour."""
    new = [to, corner]
    prev = corner
    k = i + 2 * f
    while 0 <= k < n:
        if pos[k] - prev in ADJACENT:
            break
        prev = pos[k - 2 * f]
        new.append(prev)
        k += f
    return new


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
