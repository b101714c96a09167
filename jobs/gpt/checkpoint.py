"""Atomic, self-describing training checkpoints.

A checkpoint is written to a temp file in the same directory, fsynced, then renamed
over the old one (and the directory fsynced), so a kill at any moment leaves either
the previous checkpoint or the new one, never a torn file. Readers that opened the
old file keep reading it after the rename, so sampling while training is safe.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from jobs.gpt.config import ConfigError, GPTConfig, config_mismatch
from jobs.gpt.tokenizer import Tokenizer, TokenizerError, tokenizer_from_dict

CHECKPOINT_NAME = "ckpt.pt"
FORMAT = "salvage-gpt-checkpoint"
VERSION = 1
_TMP_PREFIX = f".{CHECKPOINT_NAME}."


class CheckpointError(ValueError):
    """An unusable checkpoint; one line naming `checkpoint` (or the mismatching field)."""


def checkpoint_path(path: Path) -> Path:
    """A checkpoint file, or the standard checkpoint inside a run directory."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, "version": VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def remove_stale_temps(directory: Path) -> None:
    """Temp files left by a writer that was killed mid-write; never the checkpoint itself."""
    for tmp in Path(directory).glob(f"{_TMP_PREFIX}*.tmp"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = checkpoint_path(Path(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    try:
        # weights_only: a checkpoint is data, never code to run.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint: {path} is corrupt or unreadable ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not a salvage GPT checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint: {path} has format version {state.get('version')}, expected {VERSION}")
    missing = {"model", "config", "tokenizer", "iter"} - state.keys()
    if missing:
        raise CheckpointError(f"checkpoint: {path} lacks {', '.join(sorted(missing))}")
    return state


def checkpoint_config(state: dict[str, Any]) -> GPTConfig:
    try:
        return GPTConfig.from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint: stored config is invalid ({exc})") from None


def checkpoint_tokenizer(state: dict[str, Any]) -> Tokenizer:
    try:
        return tokenizer_from_dict(state["tokenizer"])
    except TokenizerError as exc:
        raise CheckpointError(f"checkpoint: stored tokenizer is invalid ({exc})") from None


def check_compatible(state: dict[str, Any], cfg: GPTConfig, tokenizer: Tokenizer, path: Path) -> None:
    """Refuse to resume a run with a different model, training recipe or vocabulary."""
    mismatch = config_mismatch(checkpoint_config(state), cfg)
    if mismatch:
        raise CheckpointError(f"{mismatch} (checkpoint {path}; use a new output directory for a different run)")
    saved = checkpoint_tokenizer(state)
    if saved.to_dict() != tokenizer.to_dict():
        what = (
            f"{saved.kind} tokenizer ({saved.vocab_size} symbols)"
            if saved.kind != tokenizer.kind
            else f"vocabulary of {saved.vocab_size} characters"
        )
        raise CheckpointError(
            f"tokenizer: checkpoint {path} was trained with a {what}, this run's data gives "
            f"{tokenizer.kind} with {tokenizer.vocab_size} symbols (different data or tokenizer)"
        )
