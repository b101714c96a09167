"""Training across an uneven pool with rare synchronisation (DiLoCo-style rounds):
the worker's side.

Each round the head sends the global parameters out once; every worker runs its own
number of local AdamW steps (`train_step`) on its own stream of batches and sends back
its parameter delta, compressed. The head's side (averaging, the outer step, planning
a round) is numpy only, in `jobs.gpt.outer`. Everything here is plain PyTorch: Ray
only places `LocalTrainer`s and carries the arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from jobs.gpt.batches import BatchSampler
from jobs.gpt.codecs import ErrorFeedback, Packed, decode
from jobs.gpt.config import CODECS, ConfigError, GPTConfig
from jobs.gpt.model import GPT
from jobs.gpt.outer import PoolSchedule
from jobs.gpt.precision import (
    choose_micro_batch,
    choose_precision,
    device_facts,
    resolve_device,
)
from jobs.gpt.train import build_optimizer, train_step

# ---------------------------------------------------------------- the worker side


@dataclass
class RoundResult:
    delta: Packed
    tokens: int
    steps: int
    loss: float
    sampler_state: dict[str, Any] = field(default_factory=dict)


def flat_params(model: torch.nn.Module) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().float().cpu().numpy()


@torch.no_grad()
def load_flat(model: torch.nn.Module, vec: np.ndarray) -> None:
    """Copy a flat vector into the parameters. (torch's vector_to_parameters would
    make them views of the vector, so training would overwrite the caller's array.)"""
    flat = torch.from_numpy(np.asarray(vec, dtype=np.float32))
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.copy_(flat[offset:offset + n].view_as(p))
        offset += n


class LocalTrainer:
    """One worker's model, inner AdamW and batch stream; lives across rounds so the
    inner optimizer's moments carry over, as in DiLoCo."""

    def __init__(
        self,
        cfg: GPTConfig,
        train_tokens: np.ndarray,
        vocab_size: int,
        *,
        seed: int,
        device: str = "auto",
        codec: str = "fp16",
        throttle: Any = None,
    ) -> None:
        if codec not in CODECS:
            raise ConfigError(f"codec: expected one of {', '.join(CODECS)}, got {codec!r}")
        self.cfg = cfg
        self.codec = codec
        self.throttle = throttle
        self.dev = resolve_device(device)
        capability, free_bytes, self.device_name = device_facts(self.dev)
        self.precision = choose_precision(self.dev.type, capability, dtype=cfg.train.dtype, compile=False)
        # Every worker builds the same initial model (the job's seed), so a fresh job
        # starts with the global parameters already in place everywhere, at no cost.
        torch.manual_seed(cfg.train.seed)
        model_cfg = replace(cfg.model, vocab_size=cfg.model.vocab_size or vocab_size)
        self.model = GPT(model_cfg).to(self.dev)
        torch.manual_seed(seed)  # this worker's own dropout stream
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.grad_scaler else None
        self.autocast = (
            torch.autocast(self.dev.type, dtype=self.precision.torch_dtype)
            if self.precision.dtype != "float32" else None
        )
        self.micro, _ = choose_micro_batch(model_cfg, cfg.train, self.precision, free_bytes, self.model.num_params())
        self.sampler = BatchSampler(train_tokens, model_cfg.block_size, cfg.train.batch_size, seed=seed)
        self.tokens_per_step = cfg.train.batch_size * model_cfg.block_size
        self.uplink = ErrorFeedback(codec)
        self.global_copy = flat_params(self.model)

    def describe(self) -> str:
        return f"{self.device_name} ({self.dev}), {self.precision.dtype}, micro-batch {self.micro}"

    def receive(self, message: Packed) -> np.ndarray:
        """Apply a broadcast to this worker's copy of the global parameters."""
        if message.full:
            self.global_copy = decode(message).copy()
        else:
            self.global_copy = self.global_copy + decode(message)
        return self.global_copy

    def run_round(
        self, message: Packed, steps: int, start_tokens: float, round_tokens: float, schedule: PoolSchedule,
        budget_s: float | None = None,
        overrun_cost: float = 1.0,
        should_stop: Callable[[], bool] | None = None,
    ) -> RoundResult:
        """Take the round's global parameters, run local steps, return the delta.

        Without `budget_s` it runs exactly `steps` steps. With it, `steps` is the plan
        and the clock decides: the worker steps until the budget is spent (at least
        one step, at most twice the plan), so a worker whose speed changed since it
        was last measured neither holds the round up nor sits idle waiting for it.
        Steps do not divide the budget evenly, so the last one either ends early or
        runs past it. `overrun_cost` weighs the two: a second past the budget keeps
        the others waiting, which costs the pool `overrun_cost` seconds of this
        worker's work (the others' speed over its own), while a second early costs
        one. A slow worker with long steps therefore stops early rather than hold
        the fast ones up.
        The learning rate of local step i follows the pool's global token count at
        that moment, assuming the round's tokens arrive evenly over the planned steps.
        `should_stop` (the PC's owner wants it back) ends the round before the next
        step: what was done is still a valid delta, perhaps of no steps at all."""
        start = self.receive(message)
        load_flat(self.model, start)
        self.model.train()
        losses = []
        limit = steps if budget_s is None else 2 * steps
        t0 = time.perf_counter()
        rested = 0.0  # of the time spent, resting for the duty cycle
        if self.throttle is not None:
            self.throttle.resume()  # the end of the last round's rest, if the wait was shorter
            rested = time.perf_counter() - t0
        for i in range(limit):
            if should_stop is not None and should_stop():
                break
            if budget_s is not None and i > 0:
                if self.dev.type == "cuda":
                    torch.cuda.synchronize(self.dev)  # the clock must see the work, not its queueing
                spent = time.perf_counter() - t0
                # One more step ends after the last one's rest and its own work; its
                # own rest comes after the delta has been sent.
                rest = self.throttle.rest_due() if self.throttle is not None else 0.0
                if budget_s - spent <= overrun_cost * (spent + rest + (spent - rested) / i - budget_s):
                    break
            if i > 0 and self.throttle is not None:
                began = time.perf_counter()
                self.throttle.after_work()
                rested += time.perf_counter() - began
            lr = schedule.lr(start_tokens + round_tokens * i / steps, self.cfg)
            x, y = self.sampler.next()
            if self.dev.type == "cuda":
                x, y = x.pin_memory().to(self.dev, non_blocking=True), y.pin_memory().to(self.dev, non_blocking=True)
            loss = train_step(
                self.model, self.optimizer, list(zip(x.split(self.micro), y.split(self.micro))),
                lr=lr, grad_clip=self.cfg.train.grad_clip, scaler=self.scaler, autocast=self.autocast,
            )
            losses.append(loss)
        if self.throttle is not None:
            self.throttle.defer()  # the last step's rest is taken while the round ends elsewhere
        mean_loss = torch.stack(losses).mean().item() if losses else float("nan")
        return RoundResult(
            delta=self.uplink.encode(start - flat_params(self.model)),
            tokens=len(losses) * self.tokens_per_step,
            steps=len(losses),
            loss=mean_loss,
            sampler_state=self.sampler.state_dict(),
        )
