"""Accuracy of the science apps against reference data.

lj-md: default parameters at NIST SRSW Lennard-Jones points (MC NVT, N=500,
r_c = 3 sigma, U/N with long-range correction, P with ideal term), deviation
in combined sigma = sqrt(ours^2 + NIST^2) (NIST sigma taken as 0 where the
table gives none). hp-fold: 64 seeds per benchmark sequence (2 processes),
best energy against the best known. The last line printed is a JSON summary.

    PYTHONPATH=. .venv/bin/python benchmarks/science_accuracy.py
"""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import Pool

import torch

from jobs.science.apps import get_app

# (T*, rho*, U/N, sigma U/N, P*, sigma P*)
NIST_LJ = [
    (0.85, 0.005, -5.1901e-02, 7.5e-05, 4.1003e-03, 0.0),
    (0.85, 0.776, -5.5121, 4.6e-04, 6.7714e-03, 0.0),
    (0.85, 0.860, -6.0305, 0.0, 1.2660, 0.0),
    (0.90, 0.003, -2.9787e-02, 3.2e-05, 2.6485e-03, 0.0),
    (0.90, 0.776, -5.4689, 4.2e-04, 2.4056e-01, 2.7e-03),
    (0.90, 0.900, -6.1773, 0.0, 2.5848, 0.0),
]

HP_BENCHMARK = {
    "HPHPPHHPHPPHPHHPPHPH": -9,
    "HHPPHPPHPPHPPHPPHPPHPPHH": -9,
    "PPHPPHHPPPPHHPPPPHHPPPPHH": -8,
    "PPPHHPPHHPPPPPHHHHHHHPPHHPPPPHHPPHPP": -14,
    "HHPPPPPHHPPPHPPPHP": -4,
    "HPHPHHHPPPHHHHPPHH": -8,
}


def run_lj(points: list[tuple]) -> list[dict]:
    torch.set_num_threads(1)
    app = get_app("lj-md")
    rows = []
    for t, rho, u_ref, u_sig, p_ref, p_sig in points:
        start = time.perf_counter()
        res = app.run({"temperature": t, "density": rho})
        seconds = time.perf_counter() - start
        u_dev = (res["energy_per_particle"] - u_ref) / math.hypot(res["energy_stderr"], u_sig)
        p_dev = (res["pressure"] - p_ref) / math.hypot(res["pressure_stderr"], p_sig)
        u_target = min(0.002 * abs(res["energy_per_particle"]), 0.003)
        rows.append(
            {
                "T": t,
                "rho": rho,
                "U": res["energy_per_particle"],
                "U_err": res["energy_stderr"],
                "U_nist": u_ref,
                "U_sigma": u_dev,
                "U_err_ok": res["energy_stderr"] <= u_target,
                "P": res["pressure"],
                "P_err": res["pressure_stderr"],
                "P_nist": p_ref,
                "P_sigma": p_dev,
                "acceptance": res["acceptance"],
                "seconds": seconds,
            }
        )
        print(
            f"lj T*={t:.2f} rho*={rho:.3f}  U/N {res['energy_per_particle']:+.5f} ± {res['energy_stderr']:.5f}"
            f" (NIST {u_ref:+.5f}, {u_dev:+.2f} sigma, err target {'met' if rows[-1]['U_err_ok'] else 'MISSED'})"
            f"  P {res['pressure']:+.5f} ± {res['pressure_stderr']:.5f} (NIST {p_ref:+.5f}, {p_dev:+.2f} sigma)"
            f"  acc {res['acceptance']:.2f}  {seconds:.0f}s",
            flush=True,
        )
    return rows


def _fold(task: tuple[str, int]) -> int:
    sequence, seed = task
    app = get_app("hp-fold")
    params = {"sequence": sequence, "seed": seed}
    result = app.run(params)
    assert app.verify(params, result), f"hp-fold result failed verify for seed {seed}"
    return result["energy"]


def run_hp(seeds: int, procs: int) -> list[dict]:
    rows = []
    with Pool(procs) as pool:
        for sequence, best_known in HP_BENCHMARK.items():
            start = time.perf_counter()
            energies = pool.map(_fold, [(sequence, s) for s in range(seeds)])
            seconds = time.perf_counter() - start
            best = min(energies)
            hits = sum(e <= best_known for e in energies)
            rows.append(
                {"sequence": sequence, "best_known": best_known, "best": best, "hits": hits,
                 "seeds": seeds, "seconds": seconds}
            )
            print(
                f"hp {sequence} ({len(sequence)}): best {best} vs best-known {best_known}, "
                f"{hits}/{seeds} seeds reach it, {seconds:.0f}s ({seconds * procs / seeds:.2f}s per seed)",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=64, help="hp-fold seeds per sequence")
    parser.add_argument("--procs", type=int, default=2, help="processes for hp-fold")
    parser.add_argument("--skip-lj", action="store_true")
    parser.add_argument("--skip-hp", action="store_true")
    args = parser.parse_args()
    lj = [] if args.skip_lj else run_lj(NIST_LJ)
    hp = [] if args.skip_hp else run_hp(args.seeds, args.procs)
    summary = {
        "lj": lj,
        "hp": hp,
        "lj_max_sigma": max((max(abs(r["U_sigma"]), abs(r["P_sigma"])) for r in lj), default=None),
        "hp_all_best": all(r["best"] <= r["best_known"] for r in hp) if hp else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
