"""Salvage's GPU path on a real card: NVML, training, a pool round and a science unit.

    python benchmarks/gpu_check.py                        # auto: CUDA if torch sees one
    python benchmarks/gpu_check.py --device cpu --quick   # every step on the CPU, tiny sizes

Plain PyTorch and NVML, no Ray (the GPU box it is meant for has neither Ray nor a
network). Four checks, each reported as data, so that one failing does not hide
the others:

nvml    every GPU through the real `pynvml` and salvage's own reader
        (`workers.gpus.GpuReader`): name, VRAM, compute capability, driver and a
        live sample (again right after training, under load). NVML errors are
        reported, not raised; without NVML the run goes on. Passes when every GPU
        torch sees is also seen by NVML, with the same compute capability.
train   the GPU preset (`shakespeare-char`) for --iters iterations through
        `jobs.gpt.train.train`, as a single job runs it (same precision choice,
        compile, micro-batching): tokens/s, first and last train loss, val loss.
        Passes when the losses are finite and the last is below the first.
delta   one pool worker's round (`jobs.gpt.diloco.LocalTrainer.run_round`: same
        seed, same batches, same schedule point, no dropout since two devices'
        masks can never match) on the device at the precision salvage picks for
        it, and on the CPU in fp32; the relative L2 error
        |d_dev - d_cpu| / |d_cpu| of the two parameter deltas must stay within
        `delta_bound` (see there for why 2*sqrt(u)).
lj      one small `lj-md` unit on the device and on the CPU, same params and seed:
        U/N must agree within COMPARE_SIGMAS combined standard errors, the
        band the science server itself uses to accept two hosts' results, and
        the server's own `compare` (energy and pressure) must accept the pair.

Progress goes to stderr; the LAST line on stdout is one JSON object with all the
figures, each check's verdict, `pass` and timings. Exit status 1 when a check
fails, 2 for bad arguments. With `--device cpu` both sides of each comparison run
on the CPU, so the script is exercised by the unit tests without a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.gpt.codecs import Broadcast, decode  # noqa: E402
from jobs.gpt.config import GPTConfig, load_config  # noqa: E402
from jobs.gpt.data import Dataset, prepare_data  # noqa: E402
from jobs.gpt.diloco import LocalTrainer, flat_params  # noqa: E402
from jobs.gpt.outer import PoolSchedule  # noqa: E402
from jobs.gpt.precision import DeviceError, choose_precision, device_facts, resolve_device  # noqa: E402
from jobs.gpt.train import USER_ERRORS, format_progress, train  # noqa: E402
from jobs.science.apps import get_app  # noqa: E402
from jobs.science.apps.lj_md import COMPARE_SIGMAS  # noqa: E402
from workers.gpus import GpuReader, open_nvml  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
PRESET = "shakespeare-char"

# Unit roundoff of the numbers a matmul multiplies at each precision (bf16 keeps 8
# significand bits, fp16 and TF32 11, fp32 24); accumulation is fp32 in all of them.
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "tf32": 2.0**-11, "float32": 2.0**-24}
DELTA_BOUND_FACTOR = 2.0

# The schedule point of the compared round: a tenth of the way in, past warmup, so the
# learning rate is near its peak and the steps are as large as they get.
ROUND_AT = 0.1
WORKER_SEED = 1
# A small liquid. 256 particles are a perfect fcc start (4 * 4**3; other counts leave
# overlaps that HMC rejects for ever), and at rho* 0.7 their box (edge 7.15) still
# exceeds 2 * (cut-off + skin) = 7, as lj-md requires.
LJ_UNIT = {"temperature": 0.9, "density": 0.7, "n_particles": 256, "seed": 0}


@dataclass(frozen=True)
class Sizes:
    """What one run trains and simulates; --quick shrinks everything for tests."""

    iters: int
    train_overrides: dict[str, Any]
    round_steps: int
    lj_params: dict[str, Any]


def sizes(quick: bool, iters: int | None) -> Sizes:
    if quick:
        n = iters or 40
        model = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 8,
                 "learning_rate": 3e-3, "warmup_iters": 5, "eval_iters": 2, "log_interval": 5}
        lj = {**LJ_UNIT, "steps": 200, "equilibration_steps": 50}
        return Sizes(n, model, 2, lj)
    n = iters or 300
    # The preset's model, batch and evaluation; only the length (and the schedule
    # squeezed into it) changes. One evaluation, at the end.
    return Sizes(n, {"log_interval": 10}, 4, {**LJ_UNIT, "steps": 1000, "equilibration_steps": 250})


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def free_device_memory() -> None:
    """Hand the last phase's tensors back before the next phase sizes its batches
    from the free memory (a compiled model holds reference cycles)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- nvml


def probe_nvml() -> tuple[dict[str, Any], GpuReader | None]:
    """Salvage's reader on the real pynvml. Anything NVML raises is recorded, not raised."""
    out: dict[str, Any] = {"gpus": [], "samples": [], "notes": [], "error": None}
    try:
        reader = GpuReader(open_nvml(None))
    except ImportError as exc:
        out["error"] = f"pynvml is not installed ({exc}); salvage would run this PC as CPU-only"
        return out, None
    try:
        reader.start()
        out["notes"] = list(reader.notes)
        out["gpus"] = [asdict(g) for g in reader.probe()]
        out["samples"] = [asdict(s) for s in reader.sample()]
    except Exception as exc:  # an NVML error the reader does not expect is exactly what this looks for
        out["error"] = error_text(exc)
        out["notes"] = list(reader.notes)
    return out, reader


def sample_again(reader: GpuReader | None) -> list[dict[str, Any]] | str:
    if reader is None or not reader.handles:
        return []
    try:
        return [asdict(s) for s in reader.sample()]
    except Exception as exc:
        return error_text(exc)


def torch_gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                     "total_bytes": int(props.total_memory)})
    return gpus


def nvml_verdict(nvml: dict[str, Any], cuda_gpus: list[dict[str, Any]]) -> bool:
    """No GPU for torch: NVML may be absent (a CPU-only PC) but must not see GPUs. GPUs
    for torch: NVML must see each with the same compute capability, or the agent
    would misplace work."""
    if not cuda_gpus:
        # GPUs NVML can see but torch cannot (a CPU-only torch, a driver too old for
        # it): the agent would offer GPUs its work could never use.
        return not nvml["gpus"]
    if nvml["error"] is not None:
        return False
    seen = [g["compute_capability"] for g in nvml["gpus"]]
    for gpu in cuda_gpus:  # CUDA may order or hide GPUs differently from NVML: match by capability
        if gpu["compute_capability"] not in seen:
            return False
        seen.remove(gpu["compute_capability"])
    return bool(nvml["samples"]) and not any(s["lost"] for s in nvml["samples"])


# ---------------------------------------------------------------- training


def train_config(s: Sizes) -> GPTConfig:
    base = load_config(PRESET)
    # As benchmarks/train_single.py: the cosine schedule squeezed into the shorter run.
    overrides = {**s.train_overrides, "max_iters": s.iters, "lr_decay_iters": max(s.iters, base.train.warmup_iters),
                 "eval_interval": s.iters}
    if "warmup_iters" not in overrides:
        overrides["warmup_iters"] = min(base.train.warmup_iters, s.iters)
    return load_config(PRESET, overrides=overrides)


def run_training(cfg: GPTConfig, data: str | None, device: str, work: Path) -> dict[str, Any]:
    """The single-job path, as a Ray task runs it. Restores the TF32 switches afterwards:
    train() turns them on for the process, a pool worker never does."""
    progress: list[dict[str, Any]] = []

    def on_progress(p: dict[str, Any]) -> None:
        progress.append(p)
        say(f"  {format_progress(p)}")

    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    t0 = time.perf_counter()
    try:
        summary = train(cfg, data, work / "run", device=device, on_progress=on_progress,
                        on_log=lambda line: say(f"  {line}"), cache_dir=work / "cache")
    except Exception as exc:
        kind = "user error" if isinstance(exc, USER_ERRORS) else "crash"
        say(f"  training failed ({kind}): {error_text(exc)}")
        if not isinstance(exc, USER_ERRORS):
            say(traceback.format_exc())
        return {"pass": False, "error": error_text(exc), "seconds": time.perf_counter() - t0}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        free_device_memory()
    first = progress[0] if progress else {}
    losses = [first.get("train_loss"), summary["train_loss"], summary["val_loss"]]
    finite = all(isinstance(x, float) and math.isfinite(x) for x in losses)
    return {
        "pass": finite and summary["train_loss"] < first["train_loss"] and bool(summary["tokens_per_s"]),
        "iters": summary["iters"],
        "tokens_per_s": summary["tokens_per_s"],
        "first_loss": first.get("train_loss"),
        "first_loss_iter": first.get("iter"),
        "last_loss": summary["train_loss"],
        "val_loss": summary["val_loss"],
        "precision": summary["precision"],
        "device_name": summary["device_name"],
        "params": summary["params"],
        "micro_batch_size": summary["micro_batch_size"],
        "grad_accum_steps": summary["grad_accum_steps"],
        "data": summary["data"],
        "data_note": summary["data_note"],
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------- a pool round


def delta_bound(device_precision: str, reference_precision: str = "float32") -> float:
    """The largest relative L2 error between two devices' round deltas that precision explains.

    Inner AdamW makes each step roughly a sign step (its first is exactly
    lr * sign(g): m / sqrt(v) = g / |g|). A parameter whose gradient is smaller than
    the gradient's rounding error, about u relative to typical gradients, may step
    the other way on the other device: a fraction ~u of the entries err by 2 lr
    against a delta of ~lr per entry, so |err| / |delta| ~ sqrt(u), both sides'
    roundings adding up. Later steps average over earlier gradients, so the first
    step is the worst. Measured with CPU autocast against float64 (the CPU preset,
    first step of a round): bfloat16 0.069 = 1.10 sqrt(2^-8), float16 with a grad
    scaler 0.022 = 0.98 sqrt(2^-11), float32 2e-5 (far inside: no input rounding).
    The GPU preset (batch 4 to fit this CPU) in bfloat16 against float32: 0.078 =
    1.25 sqrt(u) after one step, 0.029 after eight. The bound is about twice the
    first-step figure: 2 * sqrt(u_dev + u_ref), i.e. 0.125 for bfloat16 on a GPU
    against fp32, 0.044 for float16, 6.9e-4 for fp32 against fp32. A broken path
    (other batches, a gradient left scaled, a wrong copy between devices) gives
    errors of order 1. (An fp16 step the grad scaler skips is a real difference:
    the figures report it as scaler_skipped_steps.)"""
    return DELTA_BOUND_FACTOR * math.sqrt(UNIT_ROUNDOFF[device_precision] + UNIT_ROUNDOFF[reference_precision])


def round_config(cfg: GPTConfig) -> GPTConfig:
    # Dropout masks come from each device's own generator and can never match, so
    # the compared round runs without dropout: what is left differs only by arithmetic.
    return replace(cfg, model=replace(cfg.model, dropout=0.0))


def round_delta(cfg: GPTConfig, data: Dataset, device: str, steps: int) -> dict[str, Any]:
    """One worker's round from the job's initial parameters; the delta it would send
    (fp32 codec, so that no rounding on the wire is mixed into the comparison)."""
    t0 = time.perf_counter()
    trainer = LocalTrainer(cfg, data.train, data.tokenizer.vocab_size, seed=WORKER_SEED, device=device, codec="fp32")
    total = cfg.train.max_iters * trainer.tokens_per_step
    start = Broadcast(flat_params(trainer.model), "fp32").full()
    result = trainer.run_round(start, steps, ROUND_AT * total, steps * trainer.tokens_per_step,
                               PoolSchedule(total_tokens=total))
    out: dict[str, Any] = {
        "delta": decode(result.delta),
        "loss": result.loss,
        "steps": result.steps,
        "precision": trainer.precision.dtype,
        "grad_scaler": trainer.precision.grad_scaler,
        "micro_batch_size": trainer.micro,
        "describe": trainer.describe(),
        "tf32": trainer.dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
    }
    if trainer.scaler is not None:
        # LocalTrainer keeps GradScaler's defaults: it starts at 2**16 and, within its
        # 2000-step growth interval, only halves, once per step skipped for inf/NaN.
        out["scaler_skipped_steps"] = round(math.log2(2.0**16 / trainer.scaler.get_scale()))
    del trainer
    free_device_memory()
    out["seconds"] = time.perf_counter() - t0
    return out


def run_delta_check(cfg: GPTConfig, data: Dataset, device: str, steps: int) -> dict[str, Any]:
    dev = round_delta(cfg, data, device, steps)
    say(f"  {device}: {dev['describe']}: {steps} steps in {dev['seconds']:.1f} s, loss {dev['loss']:.4f}")
    ref = round_delta(cfg, data, "cpu", steps)
    say(f"  cpu: {ref['describe']}: {steps} steps in {ref['seconds']:.1f} s, loss {ref['loss']:.4f}")
    a, b = dev.pop("delta"), ref.pop("delta")
    norm = float(np.linalg.norm(b))
    rel = float(np.linalg.norm(a - b)) / norm if norm > 0 else float("inf")
    precision = "tf32" if dev["precision"] == "float32" and dev["tf32"] else dev["precision"]
    bound = delta_bound(precision, ref["precision"])
    cos = float(a @ b) / (float(np.linalg.norm(a)) * norm) if norm > 0 else float("nan")
    return {
        "pass": math.isfinite(rel) and rel <= bound,
        "rel_error": rel,
        "bound": bound,
        "bound_rule": f"2*sqrt(u_{precision} + u_{ref['precision']})",
        "cosine": cos,
        "delta_norm": norm,
        "steps": steps,
        "schedule_at": ROUND_AT,
        "device": dev,
        "reference": ref,
    }


# ---------------------------------------------------------------- lj-md


def run_lj_unit(params: dict[str, Any], device: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = get_app("lj-md").run(params, device=device)
    return {**result, "seconds": time.perf_counter() - t0}


def run_lj_check(params: dict[str, Any], device: str) -> dict[str, Any]:
    app = get_app("lj-md")
    dev = run_lj_unit(params, device)
    say(f"  {device}: U/N {dev['energy_per_particle']:+.5f} ± {dev['energy_stderr']:.5f} in {dev['seconds']:.1f} s")
    ref = run_lj_unit(params, "cpu")
    say(f"  cpu: U/N {ref['energy_per_particle']:+.5f} ± {ref['energy_stderr']:.5f} in {ref['seconds']:.1f} s")
    diff = abs(dev["energy_per_particle"] - ref["energy_per_particle"])
    combined = math.hypot(dev["energy_stderr"], ref["energy_stderr"])
    band = COMPARE_SIGMAS * combined
    energy_ok = math.isfinite(diff) and diff <= band
    strip = ("seconds",)
    validator_ok = app.compare({k: v for k, v in dev.items() if k not in strip},
                               {k: v for k, v in ref.items() if k not in strip})
    return {
        "pass": energy_ok and validator_ok,
        "energy_pass": energy_ok,
        "validator_agrees": validator_ok,
        "energy_diff": diff,
        "energy_band": band,
        "energy_diff_sigmas": diff / combined if combined > 0 else (0.0 if diff == 0 else float("inf")),
        "params": params,
        "device": dev,
        "reference": ref,
    }


# ---------------------------------------------------------------- the run


def phase(name: str, checks: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one check; a crash is its failure, recorded, and the next check still runs."""
    say(f"== {name}")
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:
        say(traceback.format_exc())
        out = {"pass": False, "error": error_text(exc)}
    out["seconds"] = time.perf_counter() - t0
    checks[name] = out
    say(f"== {name}: {'pass' if out['pass'] else 'FAIL'} ({out['seconds']:.1f} s)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="cpu: every step on the CPU, each comparison CPU against CPU")
    parser.add_argument("--iters", type=int, default=None, help="training iterations [300; 40 with --quick]")
    parser.add_argument("--quick", action="store_true", help="tiny model and science unit (for tests)")
    parser.add_argument("--data", default=None,
                        help=f"text to train on [{DEFAULT_DATA} when present, else Tiny Shakespeare "
                        "downloaded, else Python's pydoc text (said in data_note)]")
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 2:
        parser.error("--iters: expected 2 or more (the first iteration is left out of tokens/s)")
    try:
        dev = resolve_device(args.device)
    except DeviceError as exc:
        print(exc, file=sys.stderr)
        return 2
    device = dev.type
    data = args.data if args.data is not None else (str(DEFAULT_DATA) if DEFAULT_DATA.exists() else None)
    s = sizes(args.quick, args.iters)
    if device == "cpu" and not args.quick:
        say(f"note: the {PRESET} preset on a CPU takes seconds per iteration; --quick is the CPU-sized run")
    wall = time.perf_counter()
    checks: dict[str, Any] = {}

    say("== nvml")
    t0 = time.perf_counter()
    nvml, reader = probe_nvml()
    cuda_gpus = torch_gpus()
    nvml["pass"] = nvml_verdict(nvml, cuda_gpus)
    nvml["seconds"] = time.perf_counter() - t0
    checks["nvml"] = nvml
    for g in nvml["gpus"]:
        say(f"  GPU {g['index']}: {g['name']}, {g['vram_bytes'] / 2**30:.1f} GiB, cc {g['compute_capability']}, "
            f"driver {g['driver']}")
    for note in [*nvml["notes"], *([nvml["error"]] if nvml["error"] else [])]:
        say(f"  {note}")
    capability, _free, device_name = device_facts(dev)
    cfg = train_config(s)
    precision = choose_precision(device, capability, dtype=cfg.train.dtype, compile=cfg.train.compile)
    say(f"  training device: {device_name} ({device}), precision {precision.dtype}"
        f"{' + grad scaler' if precision.grad_scaler else ''}, compile {'on' if precision.compile else 'off'}")

    with tempfile.TemporaryDirectory(prefix="salvage-gpu-check-") as tmp:
        work = Path(tmp)
        train_out = phase("train", checks, lambda: run_training(cfg, data, device, work))
        checks["nvml"]["samples_after_training"] = sample_again(reader)
        rcfg = round_config(cfg)

        def delta() -> dict[str, Any]:
            dataset = prepare_data(data, rcfg.train.tokenizer, rcfg.model.block_size, work / "cache")
            return run_delta_check(rcfg, dataset, device, s.round_steps)

        delta_out = phase("delta", checks, delta)
    lj_out = phase("lj", checks, lambda: run_lj_check(s.lj_params, device))
    if reader is not None and reader.handles:
        try:
            reader.nvml.nvmlShutdown()
        except Exception as exc:
            checks["nvml"]["shutdown_error"] = error_text(exc)

    passed = all(c["pass"] for c in checks.values())
    report = {
        "device": device,
        "device_name": device_name,
        "devices": nvml["gpus"],
        "torch_devices": cuda_gpus,
        "nvml_error": nvml["error"],
        "nvml_notes": nvml["notes"],
        "precision": {"dtype": precision.dtype, "grad_scaler": precision.grad_scaler, "compile": precision.compile,
                      "capability": None if capability is None else f"{capability[0]}.{capability[1]}"},
        "preset": PRESET,
        "quick": args.quick,
        "iters": s.iters,
        "tokens_per_s": train_out.get("tokens_per_s"),
        "losses": {k: train_out.get(k) for k in ("first_loss", "first_loss_iter", "last_loss", "val_loss")},
        "data": train_out.get("data"),
        "data_note": train_out.get("data_note"),
        "delta_rel_error": delta_out.get("rel_error"),
        "delta_bound": delta_out.get("bound"),
        "delta_pass": delta_out["pass"],
        "lj_energy": {"device": lj_out.get("device", {}).get("energy_per_particle"),
                      "device_stderr": lj_out.get("device", {}).get("energy_stderr"),
                      "cpu": lj_out.get("reference", {}).get("energy_per_particle"),
                      "cpu_stderr": lj_out.get("reference", {}).get("energy_stderr"),
                      "band": lj_out.get("energy_band")},
        "lj_pass": lj_out["pass"],
        "checks": {name: c["pass"] for name, c in checks.items()},
        "pass": passed,
        "timings_s": {**{name: round(c["seconds"], 2) for name, c in checks.items()},
                      "total": round(time.perf_counter() - wall, 2)},
        "details": checks,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "threads": torch.get_num_threads()},
        # What this script promises its GPU box: nothing here pulls in Ray.
        "ray_imported": "ray" in sys.modules,
    }
    say(f"overall: {'pass' if passed else 'FAIL'} " + ", ".join(f"{k} {'ok' if v else 'FAIL'}"
                                                              for k, v in report["checks"].items()))
    print(json.dumps(json_safe(report), allow_nan=False))
    return 0 if passed else 1


def json_safe(value: Any) -> Any:
    """Plain JSON: numpy scalars as numbers, NVML's bytes as text, and NaN/inf (which
    strict parsers reject) as null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
