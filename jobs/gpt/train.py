"""Single-device GPT training: the job a cluster node (or a bare GPU box) runs.

`train()` is the entry point the coordinator wraps in a Ray task; `train_step()` is
one optimisation step over given batches, kept free of logging, checkpointing and
data loading so that a multi-worker scheme (DiLoCo) can drive it with its own loop.
Run directly: `python -m jobs.gpt.train --preset shakespeare-char-cpu --out runs/x`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.dutycycle import DutyCycle
from jobs.gpt.adamw import AdamW
from jobs.gpt.batches import BatchSampler, fixed_batches
from jobs.gpt.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from jobs.gpt.config import PRESETS, ConfigError, GPTConfig, load_config
from jobs.gpt.data import DataError, default_cache_dir, prepare_data
from jobs.gpt.model import GPT
from jobs.gpt.precision import (
    DeviceError,
    choose_micro_batch,
    choose_precision,
    device_facts,
    resolve_device,
)
from jobs.gpt.schedule import lr_at
from jobs.gpt.tokenizer import TokenizerError

log = logging.getLogger("jobs.gpt")

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; one line naming the loss and the checkpoint kept."""


# Errors caused by what the user asked for (as opposed to bugs): callers show the
# one-line message instead of a traceback.
USER_ERRORS = (ConfigError, DataError, CheckpointError, DeviceError, TokenizerError, TrainingDiverged)


def train_step(
    model: torch.nn.Module,
    optimizer: AdamW,
    micro_batches: Sequence[Batch],
    *,
    lr: float,
    grad_clip: float,
    scaler: torch.amp.GradScaler | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """One optimisation step: gradients averaged over `micro_batches`, clipped, applied.

    Returns the mean loss as a detached device tensor (reading it syncs a GPU, so the
    caller decides when). Gradients are cleared afterwards.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    n = len(micro_batches)
    ctx = autocast or contextlib.nullcontext()
    total: torch.Tensor | None = None
    for x, y in micro_batches:
        with ctx:
            _, loss = model(x, y)
        scaled = loss / n if n > 1 else loss
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if grad_clip > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad()
    assert total is not None, "micro_batches must not be empty"
    return total / n if n > 1 else total


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    micro_batch: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
) -> float:
    """Mean loss over fixed batches (eval mode: no dropout, no RNG consumed)."""
    was_training = model.training
    model.eval()
    ctx = autocast or contextlib.nullcontext()
    losses = []
    for x, y in batches:
        for xm, ym in zip(x.split(micro_batch), y.split(micro_batch)):
            with ctx:
                _, loss = model(_to(xm, device), _to(ym, device))
            losses.append(loss.float())
    model.train(was_training)
    return torch.stack(losses).mean().item()


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def build_optimizer(model: GPT, cfg: GPTConfig) -> AdamW:
    t = cfg.train
    return AdamW(model.param_groups(t.weight_decay), lr=t.learning_rate, betas=(t.beta1, t.beta2))


def _rng_state(sampler: BatchSampler, device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's key array as plain ints: checkpoints load with weights_only=True.
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "python": random.getstate(),
        "sampler": sampler.state_dict(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], sampler: BatchSampler, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    sampler.load_state_dict(state["sampler"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class _Timing:
    """Training-step wall time, excluding evaluation/checkpointing and the first step
    after (re)start, which pays for lazy initialisation and compilation."""

    start: float = 0.0
    excluded: float = 0.0
    steps: int = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.excluded


def train(
    cfg: GPTConfig,
    data_source: str | None,
    workdir: Path,
    *,
    device: str = "auto",
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_log: Callable[[str], None] | None = None,
    cache_dir: Path | None = None,
    throttle: DutyCycle | None = None,
) -> dict[str, Any]:
    """Train (or resume, if `workdir` holds a checkpoint) and return a summary.

    on_progress: called every log_interval iterations with {iter, max_iters,
        train_loss, tokens_per_s, eta_s, lr, elapsed_s}; after an evaluation also
        val_loss and checkpoint (the path just written).
    should_stop: polled once per iteration (keep it cheap); True checkpoints and returns.
    on_log: receives human-readable lines (device, precision, parameter count, data note).
    cache_dir: where the corpus and its token cache live (default ~/.cache/salvage/gpt
        or $SALVAGE_CACHE_DIR); share it between runs to encode a corpus once.
    throttle: the owner's duty cycle, rested after each step.
    Raises one of USER_ERRORS with a one-line message for bad input or divergence.
    """
    say = on_log or log.info
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(workdir)
    ckpt_path = workdir / CHECKPOINT_NAME
    t_cfg = cfg.train

    dev = resolve_device(device)
    capability, free_bytes, device_name = device_facts(dev)
    precision = choose_precision(dev.type, capability, dtype=t_cfg.dtype, compile=t_cfg.compile)
    if dev.type == "cuda" and capability and capability >= (8, 0):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    data = prepare_data(data_source, t_cfg.tokenizer, cfg.model.block_size, cache_dir or default_cache_dir())
    if data.note:
        say(f"note: {data.note}")
    tokenizer = data.tokenizer
    vocab_size = cfg.model.vocab_size or tokenizer.vocab_size
    if vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"vocab_size: expected at least the tokenizer's {tokenizer.vocab_size}, got {vocab_size}")
    model_cfg = replace(cfg.model, vocab_size=vocab_size)

    state = None
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=dev)
        check_compatible(state, cfg, tokenizer, ckpt_path)

    if state is None:
        torch.manual_seed(t_cfg.seed)
        np.random.seed(t_cfg.seed)
        random.seed(t_cfg.seed)
    model = GPT(model_cfg).to(dev)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if precision.grad_scaler else None
    sampler = BatchSampler(data.train, model_cfg.block_size, t_cfg.batch_size, seed=t_cfg.seed)
    it = 0
    last_val: float | None = None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            _restore_rng(state["rng"], sampler, dev)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint: {ckpt_path} cannot be resumed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
            ) from None
        it = int(state["iter"])
        last_val = state.get("val_loss")
        say(f"resuming from {ckpt_path} at iter {it}")
    resumed_from = it if state is not None else None
    del state

    n_params = model.num_params()
    # On a CPU the thread count decides the speed, and a Ray task gets only its num_cpus.
    threads = torch.get_num_threads()
    threads_note = f", {threads} thread{'s' if threads != 1 else ''}" if dev.type == "cpu" else ""
    micro, accum = choose_micro_batch(model_cfg, t_cfg, precision, free_bytes, n_params)
    say(
        f"model: {n_params / 1e6:.2f}M parameters ({model_cfg.n_layer} layers, {model_cfg.n_head} heads, "
        f"n_embd {model_cfg.n_embd}, block {model_cfg.block_size}, vocab {vocab_size})"
    )
    say(
        f"device: {device_name} ({dev}{threads_note}), {precision.dtype}"
        f"{' + grad scaler' if precision.grad_scaler else ''}, compile {'on' if precision.compile else 'off'}, "
        f"micro-batch {micro} x {accum} accumulation = batch {t_cfg.batch_size}"
    )
    say(f"data: {data.corpus_name}, {len(data.train):,} train / {len(data.val):,} val tokens ({tokenizer.kind})")

    step_model: torch.nn.Module = torch.compile(model) if precision.compile else model
    autocast = (
        torch.autocast(dev.type, dtype=precision.torch_dtype) if precision.dtype != "float32" else None
    )
    val_batches = fixed_batches(data.val, model_cfg.block_size, t_cfg.batch_size, t_cfg.eval_iters, t_cfg.seed + 1)
    tokens_per_iter = t_cfg.batch_size * model_cfg.block_size

    def checkpoint(val_loss: float | None) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "iter": it,
                "val_loss": val_loss,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": _rng_state(sampler, dev),
                "config": cfg.to_dict(),
                "tokenizer": tokenizer.to_dict(),
            },
        )

    def diverged(what: str, value: float, since: int) -> TrainingDiverged:
        kept = f"the last good checkpoint (iter {last_saved}) is kept at {ckpt_path}" if last_saved is not None \
            else "no checkpoint had been written yet"
        return TrainingDiverged(f"{what}: became {value} between iter {since} and {it}; training stopped, {kept}")

    def summary(stopped: bool, train_loss: float | None) -> dict[str, Any]:
        return {
            "iters": it,
            "max_iters": t_cfg.max_iters,
            "train_loss": train_loss,
            "val_loss": last_val,
            "tokens_per_s": (timing.steps * tokens_per_iter / timing.elapsed()) if timing.steps else None,
            "params": n_params,
            "precision": precision.dtype,
            "device": str(dev),
            "device_name": device_name,
            "threads": threads,
            "micro_batch_size": micro,
            "grad_accum_steps": accum,
            "checkpoint": str(ckpt_path),
            "stopped": stopped,
            "resumed_from": resumed_from,
            "data": data.corpus_name,
            "data_note": data.note,
            "elapsed_s": time.perf_counter() - wall_start,
        }

    wall_start = time.perf_counter()
    timing = _Timing()
    last_saved: int | None = resumed_from
    last_logged = it
    window_start, window_excluded, window_iters = 0.0, 0.0, 0
    train_loss: float | None = None
    start_iter = it

    model.train()
    if throttle is not None:
        throttle.start()
    while it < t_cfg.max_iters:
        if should_stop is not None and should_stop():
            checkpoint(last_val)
            say(f"stopped at iter {it}; checkpoint saved to {ckpt_path}")
            return summary(True, train_loss)
        lr = lr_at(it, t_cfg)
        # Drawn after the previous step was queued, so on a GPU it overlaps with that
        # step; and drawn after any checkpoint, so a resumed run draws the same batch.
        x, y = sampler.next()
        xd, yd = _to(x, dev), _to(y, dev)
        while True:
            try:
                loss = train_step(
                    step_model, optimizer, list(zip(xd.split(micro), yd.split(micro))),
                    lr=lr, grad_clip=t_cfg.grad_clip, scaler=scaler, autocast=autocast,
                )
                break
            except torch.OutOfMemoryError:
                # The size estimate was optimistic for this card: same batch, smaller pieces.
                if micro == 1:
                    raise DeviceError(f"device: {device_name} ran out of memory even with micro-batch 1") from None
                optimizer.zero_grad()
                torch.cuda.empty_cache()
                micro = max(d for d in range(1, micro) if t_cfg.batch_size % d == 0)
                accum = t_cfg.batch_size // micro
                say(f"out of memory: retrying with micro-batch {micro} x {accum} accumulation")
        it += 1
        if throttle is not None:
            throttle.after_work()
        if it == start_iter + 1:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            timing.start = window_start = time.perf_counter()
        else:
            timing.steps += 1
            window_iters += 1

        do_eval = it % t_cfg.eval_interval == 0 or it == t_cfg.max_iters
        if it % t_cfg.log_interval == 0 or do_eval:
            train_loss = loss.item()
            if not math.isfinite(train_loss):
                raise diverged("train_loss", train_loss, last_logged)
            progress: dict[str, Any] = {}
            if do_eval:
                t0 = time.perf_counter()
                last_val = evaluate(step_model, val_batches, micro, dev, autocast)
                if not math.isfinite(last_val):
                    raise diverged("val_loss", last_val, last_logged)
                checkpoint(last_val)
                last_saved = it
                spent = time.perf_counter() - t0
                timing.excluded += spent
                window_excluded += spent
                progress["val_loss"] = last_val
                progress["checkpoint"] = str(ckpt_path)
            now = time.perf_counter()
            window_time = now - window_start - window_excluded
            rate = window_iters * tokens_per_iter / window_time if window_iters and window_time > 0 else None
            overall_iter_s = (now - wall_start) / max(1, it - start_iter)
            progress.update(
                iter=it,
                max_iters=t_cfg.max_iters,
                train_loss=train_loss,
                lr=lr,
                tokens_per_s=rate,
                eta_s=overall_iter_s * (t_cfg.max_iters - it),
                elapsed_s=now - wall_start,
            )
            if on_progress is not None:
                on_progress(progress)
            last_logged = it
            window_start, window_excluded, window_iters = time.perf_counter(), 0.0, 0
    return summary(False, train_loss)


def format_progress(p: dict[str, Any]) -> str:
    parts = [f"iter {p['iter']}/{p['max_iters']}", f"loss {p['train_loss']:.4f}"]
    if "val_loss" in p:
        parts.append(f"val {p['val_loss']:.4f}")
    parts.append(f"lr {p['lr']:.2e}")
    if p.get("tokens_per_s"):
        parts.append(f"{p['tokens_per_s']:,.0f} tok/s")
    eta = int(p["eta_s"])
    hours = f"{eta // 3600}h" if eta >= 3600 else ""
    parts.append(f"eta {hours}{eta // 60 % 60:02d}m{eta % 60:02d}s")
    return " | ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.gpt.train", description="Train a small GPT on one device.")
    parser.add_argument("--preset", default="shakespeare-char-cpu", choices=sorted(PRESETS))
    parser.add_argument("--data", default=None, help="'shakespeare' (default), a text file or a folder of .txt files")
    parser.add_argument("--config", default=None, help="TOML file overriding preset fields")
    parser.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--max-iters", type=int, default=None)
    parser.add_argument("--cache-dir", default=None, help="corpus/token cache (default ~/.cache/salvage/gpt)")
    args = parser.parse_args(argv)

    stop_requested = False

    def on_sigint(_sig: int, _frame: Any) -> None:
        nonlocal stop_requested
        if stop_requested:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        stop_requested = True
        print("stopping after this iteration (Ctrl-C again to abort)...", flush=True)

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigint)
    try:
        overrides = {"max_iters": args.max_iters} if args.max_iters is not None else None
        cfg = load_config(args.preset, args.config, overrides)
        result = train(
            cfg,
            args.data,
            Path(args.out),
            device=args.device,
            on_progress=lambda p: print(format_progress(p), flush=True),
            should_stop=lambda: stop_requested,
            on_log=lambda line: print(line, flush=True),
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        )
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, TrainingDiverged) else 2
    tps = result["tokens_per_s"]
    print(
        f"{'stopped' if result['stopped'] else 'done'} at iter {result['iters']}: val loss "
        f"{result['val_loss'] if result['val_loss'] is None else format(result['val_loss'], '.4f')}, "
        f"{'n/a' if tps is None else format(tps, ',.0f')} tok/s, checkpoint {result['checkpoint']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
