"""Device, numeric precision and micro-batch choices, as pure functions of what a
device reports (compute capability, free bytes) so they are testable without a GPU.

Precision follows the compute capability rather than torch.cuda.is_bf16_supported(),
which answers True on some pre-Ampere cards where bf16 is emulated and slow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jobs.gpt.config import ModelConfig, TrainConfig

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DeviceError(ValueError):
    """A device request this machine cannot satisfy; one line naming `device`."""


@dataclass(frozen=True)
class Precision:
    dtype: str  # float32 | float16 | bfloat16
    grad_scaler: bool  # fp16 needs loss scaling to keep small gradients representable
    compile: bool

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def choose_precision(
    device_type: str,
    capability: tuple[int, int] | None,
    *,
    dtype: str = "auto",
    compile: bool | None = None,
) -> Precision:
    """fp32 on CPU and below cc 7.0; fp16 + GradScaler on 7.x; bf16 from 8.0.
    torch.compile (Triton) needs cc >= 7.0, and is off on CPU unless asked for."""
    if device_type != "cuda":
        auto = Precision("float32", False, False)
        chosen = auto.dtype if dtype == "auto" else dtype
        if chosen == "float16":
            raise DeviceError("dtype: float16 training needs a CUDA device; use float32 or bfloat16 on CPU")
        return Precision(chosen, False, bool(compile))
    cc = capability or (0, 0)
    if cc < (7, 0):
        auto_dtype = "float32"
    elif cc < (8, 0):
        auto_dtype = "float16"
    else:
        auto_dtype = "bfloat16"
    chosen = auto_dtype if dtype == "auto" else dtype
    if chosen == "bfloat16" and cc < (8, 0):
        raise DeviceError(f"dtype: bfloat16 needs compute capability 8.0 or newer, this GPU has {cc[0]}.{cc[1]}")
    can_compile = cc >= (7, 0)
    if compile and not can_compile:
        raise DeviceError(f"compile: torch.compile needs compute capability 7.0 or newer, this GPU has {cc[0]}.{cc[1]}")
    return Precision(chosen, chosen == "float16", can_compile if compile is None else compile)


def activation_bytes_per_sample(model: ModelConfig, precision: Precision) -> int:
    """Rough training-time activation memory for one sequence.

    Per layer and token a transformer keeps about 34*C values plus 5*heads*T for the
    attention matrix (Korthikanti et al., 2022, counted at 2 bytes); fp32 doubles it.
    The logits (T x vocab) are kept several times over by the loss.
    """
    scale = 2 if precision.dtype == "float32" else 1
    t, c = model.block_size, model.n_embd
    per_layer = t * (34 * c + 5 * model.n_head * t) * scale
    logits = t * (model.vocab_size or 256) * 4 * 3
    return model.n_layer * per_layer + logits


def choose_micro_batch(
    model: ModelConfig,
    train: TrainConfig,
    precision: Precision,
    free_bytes: int | None,
    n_params: int,
) -> tuple[int, int]:
    """(micro_batch_size, accumulation steps) whose product is exactly batch_size.

    Uses the largest divisor of batch_size whose activations fit in what is left of
    `free_bytes` after weights, gradients and AdamW state (16 bytes/param), with a
    safety margin for allocator fragmentation and the CUDA workspace.
    """
    batch = train.batch_size
    if train.micro_batch_size is not None:
        return train.micro_batch_size, batch // train.micro_batch_size
    if free_bytes is None:  # CPU: memory is not the constraint
        return batch, 1
    budget = int(free_bytes * 0.7) - 16 * n_params - 256 * 2**20
    fits = max(1, budget // max(1, activation_bytes_per_sample(model, precision)))
    micro = max(d for d in range(1, batch + 1) if batch % d == 0 and d <= fits)
    return micro, batch // micro


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DeviceError(f"device: expected auto, cpu or cuda[:N], got {requested!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device: cuda requested but no CUDA device is available to torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise DeviceError(f"device: {requested} requested but only {count} CUDA device(s) exist")
    elif device.type != "cpu":
        raise DeviceError(f"device: expected auto, cpu or cuda[:N], got {requested!r}")
    return device


def device_facts(device: torch.device) -> tuple[tuple[int, int] | None, int | None, str]:
    """(compute capability, free bytes, name) of a device; (None, None, 'cpu') on CPU."""
    if device.type != "cuda":
        return None, None, "cpu"
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, _total = torch.cuda.mem_get_info(index)
    return torch.cuda.get_device_capability(index), free, torch.cuda.get_device_name(index)
