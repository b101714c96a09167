"""Random and fixed (x, y) training batches, as torch tensors, from a token array."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _gather(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.from_numpy(tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


class BatchSampler:
    """Random (x, y) batches from a token array; its RNG state is checkpointable."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        return _gather(self.tokens, starts, self.block_size)

    def state_dict(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def fixed_batches(
    tokens: np.ndarray, block_size: int, batch_size: int, count: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same `count` batches every time for a given seed: evaluations stay comparable."""
    sampler = BatchSampler(tokens, block_size, batch_size, seed)
    return [sampler.next() for _ in range(count)]
