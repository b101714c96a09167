"""Which device a job goes to: capability match first, then speed."""
from __future__ import annotations

from dataclasses import dataclass

from workers.records import HostInfo

# CUDA context, allocator slack and the smallest micro-batch's activations.
GPU_OVERHEAD_BYTES = 600 * 2**20
BYTES_PER_PARAM = 16  # fp32 weights + gradients + two AdamW moments


def gpt_param_count(model: dict) -> int:
    """Close enough to size a card without building the model (no torch here)."""
    d, layers = model["n_embd"], model["n_layer"]
    vocab = model.get("vocab_size") or 256
    return 12 * layers * d * d + (vocab + model["block_size"]) * d


def gpt_bytes_needed(model: dict) -> int:
    return gpt_param_count(model) * BYTES_PER_PARAM + GPU_OVERHEAD_BYTES


@dataclass
class Slot:
    host: str
    gpu: int | None  # None: the host's CPU
    speed_gflops: float


def training_slots(host: HostInfo, busy: int, need_bytes: int, allow_cpu: bool = True) -> list[Slot]:
    """Free devices of `host` that fit a model needing `need_bytes`.

    One training job per GPU; a CPU-only PC takes one job on its CPU.
    """
    duty = host.duty_cycle  # a PC allowed half the time is half as fast for a job
    if host.gpus:
        fitting = sorted((g for g in host.gpus if g.vram_bytes >= need_bytes),
                         key=lambda g: -(g.speed_gflops or 0.0))
        return [Slot(host.name, g.index, (g.speed_gflops or 0.0) * duty) for g in fitting[busy:]]
    if allow_cpu and busy == 0:
        return [Slot(host.name, None, (host.cpu_gflops or 0.0) * duty)]
    return []


def fastest(slots: list[Slot]) -> Slot | None:
    return max(slots, key=lambda s: s.speed_gflops, default=None)
