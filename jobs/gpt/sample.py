"""Text generation from a training checkpoint (safe while training writes newer ones)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from jobs.gpt.checkpoint import CheckpointError, checkpoint_config, checkpoint_tokenizer, load_checkpoint
from jobs.gpt.model import GPT
from jobs.gpt.precision import DeviceError, resolve_device
from jobs.gpt.tokenizer import TokenizerError


class SampleError(ValueError):
    """A bad sampling argument; one line naming it."""


def sample(
    checkpoint_path: str | Path,
    prompt: str = "\n",
    tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int | None = None,
    *,
    device: str = "cpu",
) -> str:
    """The prompt followed by `tokens` generated tokens, decoded to text.

    `checkpoint_path` is a checkpoint file or a run directory holding ckpt.pt.
    """
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise SampleError(f"tokens: expected a positive integer, got {tokens!r}")
    if not temperature > 0:
        raise SampleError(f"temperature: expected a positive number, got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise SampleError(f"top_k: expected a positive integer or None, got {top_k!r}")
    if not prompt:
        raise SampleError("prompt: expected at least one character to start from")
    dev = resolve_device(device)
    # One read: a rename by the trainer after this point does not affect us.
    state = load_checkpoint(Path(checkpoint_path), map_location="cpu")
    cfg = checkpoint_config(state)
    tokenizer = checkpoint_tokenizer(state)
    model = GPT(replace(cfg.model, vocab_size=cfg.model.vocab_size or tokenizer.vocab_size))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise CheckpointError(f"checkpoint: {checkpoint_path} holds weights that do not fit its own config") from None
    model.to(dev).eval()
    ids = torch.from_numpy(tokenizer.encode(prompt, field="prompt")).to(dev)[None, :]
    generator = torch.Generator(device=dev)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    out = model.generate(ids, tokens, temperature=temperature, top_k=top_k, generator=generator)
    return tokenizer.decode(out[0].cpu())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.gpt.sample", description="Sample text from a checkpoint.")
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    parser.add_argument("--prompt", default="\n")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        text = sample(args.checkpoint, args.prompt, args.tokens, args.temperature, args.top_k, args.seed,
                      device=args.device)
    except (SampleError, CheckpointError, TokenizerError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
