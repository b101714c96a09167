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
the search is a pure function of the parameters, seed included (see
hp_search.py), and a checkpoint holds the whole state, generator included, so a
paused and resumed run ends exactly where an uninterrupted one does. A host
that skips the work, or copies a good fold found under another seed, disagrees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from jobs.science.apps.base import CheckpointError, Needs, ParamError, Paused, ResultError
from jobs.science.apps.checkpoint import atomic_write
from jobs.science.apps.params import as_float, as_int, reject_unknown, require

MAX_LENGTH = 1000
# the compiled search returns to Python this often to ask whether to pause (~0.05 s here) ...
CHUNK_ATTEMPTS = 1_000_000
# ... and writes a checkpoint every this many returns
CHECKPOINT_EVERY_CHUNKS = 20


# The effort rule (see default_effort); the params schema prints it.
EFFORT_ATTEMPTS_AT_64 = 40_000_000  # move attempts, all replicas, for a 64-residue chain
EFFORT_POWER = 4  # attempts grow as length**4 ...
EFFORT_MIN_ATTEMPTS, EFFORT_MAX_ATTEMPTS = 200_000, 2_000_000_000  # ... within these bounds
EFFORT_T_MIN, EFFORT_T_MAX = 0.3, 0.5


def default_effort(length: int) -> dict:
    """The search effort a chain of `length` residues gets unless the params say otherwise.

    Measured with 64-seed batches on the standard 2D benchmarks (benchmarks/science_accuracy.py):
    what matters for a batch is the chance that one unit hits the ground state, and that chance,
    at fixed effort, falls steeply with length; so the effort grows as length**4 (here an 18-mer
    takes a few hundredths of a second, a 64-mer about 1.5 s, a 100-mer about 13 s). On the hardest
    100-mer (S1-11, -50) a unit of these settings hits the ground state in about 6 of 16 seeds
    within 600 million attempts, the first after 50 million. Few replicas on a narrow, cold ladder
    hit early most often: at T = 0.3 a 100-mer sits ~4 above its ground state, below 0.25 it
    freezes, and a hot replica (the old 1.2) mostly wastes its moves on unfolded chains. More
    residues need more rungs for exchanges to keep being accepted (~25% at these settings).
    """
    replicas = 2 if length <= 30 else 3 if length <= 70 else 4
    # integers throughout: the same sweeps on every machine
    attempts = EFFORT_ATTEMPTS_AT_64 * length**EFFORT_POWER // 64**EFFORT_POWER
    attempts = min(EFFORT_MAX_ATTEMPTS, max(EFFORT_MIN_ATTEMPTS, attempts))
    return {"sweeps": -(-attempts // (replicas * length)), "replicas": replicas,
            "t_min": EFFORT_T_MIN, "t_max": EFFORT_T_MAX}


class HPFold:
    name = "hp-fold"
    version = 3
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
        # ~100 operations per move attempt
        return 100.0 * p["sweeps"] * p["replicas"] * len(p["sequence"])

    def run(
        self,
        params: dict,
        *,
        device: str = "cpu",
        checkpoint: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict:
        from jobs.science.apps.hp_search import Search  # numba: only processes that fold pay its import

        p = self.validate_params(params)
        search = Search(p)
        if checkpoint is not None and Path(checkpoint).exists():
            blob = _load(Path(checkpoint), p)
            try:
                search.restore(blob)
            except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
                raise CheckpointError(f"checkpoint: {checkpoint} does not hold an hp-fold v{self.version} search "
                                      f"({type(exc).__name__})") from None
        chunk = max(1, CHUNK_ATTEMPTS // (p["replicas"] * len(p["sequence"])))
        chunks = 0
        while search.sweeps_done < p["sweeps"]:
            if should_stop is not None and should_stop():
                if checkpoint is not None:
                    _save(checkpoint, search.snapshot())
                raise Paused(f"hp-fold paused after {search.sweeps_done}/{p['sweeps']} sweeps")
            search.advance(min(chunk, p["sweeps"] - search.sweeps_done))
            chunks += 1
            if checkpoint is not None and chunks % CHECKPOINT_EVERY_CHUNKS == 0:
                _save(checkpoint, search.snapshot())
        return {"energy": search.best_energy, "conformation": search.best_conformation()}

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
