"""hp-fold's search: replica-exchange Monte Carlo with pull moves, compiled by numba.

Interpreted, the search made about 0.6-0.8 million move attempts a second here, and a 64-seed
batch on a 100-residue chain needed more than that buys in a unit's time; compiled, it makes about
15 million (benchmarks/science_accuracy.py reports the time per unit).

The lattice is a G x G torus, G a power of two above the chain's length: a chain of n residues
spans fewer than G - 1 sites in either direction, so no two residues can meet across the seam and
the torus folds exactly like the plane. A site is x * G + y; occupancy holds residue index + 1.

Every result is a pure function of the parameters, so that two honest hosts agree bit for bit:
one splitmix64 stream drives every choice, and the only floating point in the compiled code is a
comparison of a 53-bit uniform with tables that Python builds from + - * / alone (libm's exp may
differ in the last bit between machines).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

LN2 = 0.6931471805599453
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
U30, U27, U31, U32, U11 = (np.uint64(b) for b in (30, 27, 31, 32, 11))
INV_2_53 = 1.0 / 9007199254740992.0


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


def torus_side(n: int) -> int:
    """The smallest power of two above n + 1: a chain of n residues cannot reach around it."""
    side = 4
    while side < n + 2:
        side *= 2
    return side


class Search:
    """The state of one unit's search: replicas by ladder rung, the best fold seen, the generator."""

    def __init__(self, p: dict) -> None:
        self.p = p
        seq = p["sequence"]
        self.n = n = len(seq)
        self.side = torus_side(n)
        self.shift = self.side.bit_length() - 1
        # hh[occupant]: occupant 0 is an empty site
        self.hh = np.array([0] + [c == "H" for c in seq], dtype=np.int64)
        temps = ladder(p["t_min"], p["t_max"], p["replicas"])
        k = len(temps)
        # an uphill move costs at most the contacts of the moved residues, two per residue (three at an end)
        self.accept = np.array([[exp_exact(-d / t) for d in range(2 * n + 4)] for t in temps])
        # swapping rungs a and a+1 whose energies differ by d: -1 means always (no draw)
        self.swap = np.full((max(k - 1, 1), 4 * n + 9), -1.0)
        for a in range(k - 1):
            for j in range(4 * n + 9):
                arg = (1.0 / temps[a] - 1.0 / temps[a + 1]) * (j - 2 * n - 4)
                if arg < 0:
                    self.swap[a, j] = exp_exact(arg)
        self.pos = np.zeros((k, n), dtype=np.int64)
        for r in range(k):
            self.pos[r] = np.arange(n) << self.shift  # straight along x
        self.energy = np.zeros(k, dtype=np.int64)
        self.slot = np.arange(k, dtype=np.int64)
        self.state = np.array([p["seed"] & (2**64 - 1)], dtype=np.uint64)
        self.sweeps_done = 0
        self.best_energy = 0
        self.best_pos = self.pos[0].copy()
        self._occupy()

    def _occupy(self) -> None:
        # int16 holds index + 1 of up to MAX_LENGTH residues: 2 MB a replica at 1,000
        self.occ = np.zeros((len(self.pos), self.side * self.side), dtype=np.int16)
        self.occ[np.arange(len(self.pos))[:, None], self.pos] = np.arange(1, self.n + 1)

    def restore(self, blob: dict) -> None:
        self.sweeps_done = blob["sweeps_done"]
        self.best_energy = blob["best_energy"]
        self.best_pos = np.array(blob["best"], dtype=np.int64)
        self.pos = np.array(blob["replicas"], dtype=np.int64)
        self.energy = np.array(blob["energies"], dtype=np.int64)
        self.slot = np.arange(len(self.pos), dtype=np.int64)
        self.state = np.array([blob["rng"]], dtype=np.uint64)
        self._occupy()

    def snapshot(self) -> dict:
        return {
            "params": self.p,
            "sweeps_done": self.sweeps_done,
            "best_energy": self.best_energy,
            "best": self.best_pos.tolist(),
            "replicas": self.pos[self.slot].tolist(),  # by rung
            "energies": self.energy[self.slot].tolist(),
            "rng": int(self.state[0]),
        }

    def advance(self, sweeps: int) -> None:
        """Run `sweeps` more sweeps (each: one per rung, then one exchange pass)."""
        best = np.array([self.best_energy], dtype=np.int64)
        _sweeps(self.pos, self.occ, self.energy, self.slot, self.best_pos, best, self.state, self.hh, self.accept,
                self.swap, self.shift, self.sweeps_done, self.sweeps_done + sweeps)
        self.best_energy = int(best[0])
        self.sweeps_done += sweeps

    def best_conformation(self) -> list[list[int]]:
        return self.fold(self.best_pos)

    def fold(self, sites: np.ndarray) -> list[list[int]]:
        """A chain's torus sites in plane coordinates, residue 0 at the origin (unwrapped bond by bond)."""
        mask = self.side - 1
        points = [[0, 0]]
        chain = sites.tolist()
        for a, b in zip(chain, chain[1:]):
            dx = ((b >> self.shift) - (a >> self.shift)) & mask
            dy = ((b & mask) - (a & mask)) & mask
            x, y = points[-1]
            points.append([x + (1 if dx == 1 else -1 if dx == mask else 0),
                           y + (1 if dy == 1 else -1 if dy == mask else 0)])
        return points


@njit(cache=True)
def _next(state):
    state[0] += GOLDEN
    z = state[0]
    z = (z ^ (z >> U30)) * MIX1
    z = (z ^ (z >> U27)) * MIX2
    return z ^ (z >> U31)


@njit(cache=True)
def _uniform(state):
    return float(_next(state) >> U11) * INV_2_53


@njit(cache=True)
def _step(s, d, shift, mask):
    """The site next to s in direction d: 0 +x, 1 -x, 2 +y, 3 -y."""
    x = s >> shift
    y = s & mask
    if d == 0:
        x = (x + 1) & mask
    elif d == 1:
        x = (x - 1) & mask
    elif d == 2:
        y = (y + 1) & mask
    else:
        y = (y - 1) & mask
    return (x << shift) | y


@njit(cache=True)
def _adjacent(a, b, shift, mask):
    dx = ((b >> shift) - (a >> shift)) & mask
    dy = ((b & mask) - (a & mask)) & mask
    return (dy == 0 and (dx == 1 or dx == mask)) or (dx == 0 and (dy == 1 or dy == mask))


@njit(cache=True)
def _h_neighbours(s, occ, hh, shift, mask):
    return (hh[occ[_step(s, 0, shift, mask)]] + hh[occ[_step(s, 1, shift, mask)]]
            + hh[occ[_step(s, 2, shift, mask)]] + hh[occ[_step(s, 3, shift, mask)]])


@njit(cache=True)
def _contacts(pos, occ, hh, lo, hi, shift, mask):
    """Twice the H-H contacts that involve a residue in lo..hi (a pair inside counts once per side).

    Chain neighbours count too: they touch before and after any move, so they cancel in a difference.
    """
    total = 0
    for k in range(lo, hi + 1):
        if hh[k + 1]:
            s = pos[k]
            for d in range(4):
                j = occ[_step(s, d, shift, mask)] - 1
                if j >= 0 and hh[j + 1]:
                    total += 1 if lo <= j <= hi else 2
    return total


@njit(cache=True)
def _sweeps(pos_all, occ_all, energy, slot, best_pos, best, state, hh, accept, swap, shift, first, last):
    """Sweeps first..last-1. Replica slot[r] sits at rung r; an exchange swaps slots, not states."""
    k, n = pos_all.shape
    mask = (1 << shift) - 1
    new = np.empty(n, dtype=np.int64)
    old = np.empty(n, dtype=np.int64)
    for sweep in range(first, last):
        for r in range(k):
            pos = pos_all[slot[r]]
            occ = occ_all[slot[r]]
            e = energy[slot[r]]
            for _ in range(n):
                bits = _next(state)
                i = np.int64((bits >> U32) % np.uint64(n))
                low = np.int64(bits & np.uint64(0xFFFF))
                f = 1 if low & 1 else -1  # followers are i+f, i+2f, ...
                here = pos[i]
                anchor = i - f
                nxt = i + f
                m = 0  # residues moved: new[0..m)
                if 0 <= anchor < n:
                    # i goes to a site next to its anchor, diagonal from where it is
                    a = pos[anchor]
                    horizontal = (((here >> shift) - (a >> shift)) & mask) != 0
                    perp = (2 if horizontal else 0) + ((low >> 1) & 1)
                    to = _step(a, perp, shift, mask)
                    if occ[to]:
                        continue
                    corner = _step(here, perp, shift, mask)
                    if not 0 <= nxt < n or pos[nxt] == corner:
                        new[0] = to
                        m = 1
                    elif occ[corner]:
                        continue
                    else:
                        new[0] = to
                        new[1] = corner
                        m = 2
                elif 0 <= nxt < n:
                    # an end residue steps twice, dragging the chain behind it
                    corner = _step(here, (low >> 1) & 3, shift, mask)
                    to = _step(corner, (low >> 3) & 3, shift, mask)
                    if occ[corner] or occ[to]:
                        continue
                    new[0] = to
                    new[1] = corner
                    m = 2
                else:
                    continue
                if m == 1:
                    # one residue to a diagonal site: its chain neighbours touch both sites and cancel
                    s = here
                    t = new[0]
                    d_e = 0
                    if hh[i + 1]:
                        d_e = _h_neighbours(s, occ, hh, shift, mask) - _h_neighbours(t, occ, hh, shift, mask)
                    if d_e <= 0 or _uniform(state) < accept[r, d_e]:
                        occ[s] = 0
                        occ[t] = i + 1
                        pos[i] = t
                        e += d_e
                        if e < best[0]:
                            best[0] = e
                            best_pos[:] = pos
                    continue
                # each later residue takes the old site of the one two before it, until one already
                # touches its new neighbour
                prev = new[1]
                j = i + 2 * f
                while 0 <= j < n:
                    if _adjacent(pos[j], prev, shift, mask):
                        break
                    prev = pos[j - 2 * f]
                    new[m] = prev
                    m += 1
                    j += f
                last_moved = i + (m - 1) * f
                lo = min(i, last_moved)
                hi = max(i, last_moved)
                before = _contacts(pos, occ, hh, lo, hi, shift, mask)
                for q in range(lo, hi + 1):
                    old[q - lo] = pos[q]
                    occ[pos[q]] = 0
                q = i
                for c in range(m):
                    pos[q] = new[c]
                    occ[new[c]] = q + 1
                    q += f
                d_e = (before - _contacts(pos, occ, hh, lo, hi, shift, mask)) >> 1
                if d_e <= 0 or _uniform(state) < accept[r, d_e]:
                    e += d_e
                    if e < best[0]:
                        best[0] = e
                        best_pos[:] = pos
                    continue
                for q in range(lo, hi + 1):
                    occ[pos[q]] = 0
                for q in range(lo, hi + 1):
                    pos[q] = old[q - lo]
                    occ[old[q - lo]] = q + 1
            energy[slot[r]] = e
        # exchange neighbouring rungs, even pairs after even sweeps and odd after odd
        offset = 2 * n + 4
        for a in range(sweep & 1, k - 1, 2):
            p = swap[a, energy[slot[a]] - energy[slot[a + 1]] + offset]
            if p < 0 or _uniform(state) < p:
                t = slot[a]
                slot[a] = slot[a + 1]
                slot[a + 1] = t
