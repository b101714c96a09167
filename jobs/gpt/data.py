"""Corpus loading and token caching for the GPT job (batches: jobs.gpt.batches).

A corpus is encoded once into a uint16 `.bin` file in the cache dir, named by the
hash of its text and of the tokenizer, and memory-mapped afterwards: workers that
share a cache dir never encode the same corpus twice, and batches are random
slices of the map (no copy of the whole corpus per process). No torch here: the
CLI checks a corpus before submitting without loading it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.gpt.tokenizer import Tokenizer, build_tokenizer

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = "tinyshakespeare.txt"
VAL_FRACTION = 0.1


class DataError(ValueError):
    """Unusable training data; the message is one line naming the field `data`."""


@dataclass(frozen=True)
class Corpus:
    text: str
    name: str
    # Something the caller should tell the user (e.g. that a fallback corpus is used).
    note: str | None = None


@dataclass
class Dataset:
    train: np.ndarray  # uint16, memory-mapped
    val: np.ndarray
    tokenizer: Tokenizer
    corpus_name: str
    note: str | None


def default_cache_dir() -> Path:
    env = os.environ.get("SALVAGE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "salvage" / "gpt"


def load_corpus(
    source: str | None,
    cache_dir: Path,
    *,
    url: str = SHAKESPEARE_URL,
    sha256: str = SHAKESPEARE_SHA256,
    timeout_s: float = 15.0,
) -> Corpus:
    """`"shakespeare"` or None: Tiny Shakespeare (downloaded once, checksum verified),
    falling back to Python's own `pydoc_data.topics` text when it cannot be fetched.
    Anything else is a path to a text file or a folder of `.txt` files."""
    if source is None or source == "shakespeare":
        try:
            path = fetch_shakespeare(cache_dir, url=url, sha256=sha256, timeout_s=timeout_s)
        except _DownloadFailed as exc:
            return Corpus(
                _pydoc_text(),
                "pydoc_data.topics",
                note=f"could not download Tiny Shakespeare ({exc}); "
                "training on the text of Python's pydoc_data.topics instead",
            )
        return Corpus(_read_text(path), "tinyshakespeare")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data: path {path} does not exist (expected 'shakespeare', a text file or a folder of .txt files)"
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"data: folder {path} holds no .txt files")
        text = "".join(_read_text(p) for p in files)
    else:
        text = _read_text(path)
    if not text:
        raise DataError(f"data: {path} is empty (expected text to train on)")
    return Corpus(text, str(path))


class _DownloadFailed(Exception):
    pass


def fetch_shakespeare(cache_dir: Path, *, url: str, sha256: str, timeout_s: float) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / SHAKESPEARE_FILE
    if target.exists() and _sha256_file(target) == sha256:
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            payload = resp.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _DownloadFailed(f"{url}: {getattr(exc, 'reason', exc)}") from None
    got = hashlib.sha256(payload).hexdigest()
    if got != sha256:
        # Never cache it: a wrong file must not be trained on now or later.
        raise DataError(f"data: download from {url} has SHA-256 {got}, expected {sha256}")
    _atomic_write(target, payload)
    return target


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"data: cannot read {path} ({exc.strerror})") from None
    if b"\x00" in raw:
        raise DataError(f"data: {path} looks binary (contains NUL bytes); expected UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"data: {path} is not UTF-8 text (bad byte at offset {exc.start}); expected UTF-8 text"
        ) from None


def _atomic_write(target: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_cached(text: str, tokenizer: Tokenizer, cache_dir: Path) -> np.ndarray:
    """Token ids of `text` as a read-only uint16 memmap, encoded at most once per cache dir."""
    if tokenizer.vocab_size > 65536:
        raise DataError(f"data: corpus has {tokenizer.vocab_size} distinct symbols; at most 65536 fit uint16 tokens")
    text_key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]
    tok_key = hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"tokens-{text_key}-{tokenizer.kind}-{tok_key}.bin"
    if not path.exists():
        ids = tokenizer.encode(text, field="data").astype(np.uint16)
        _atomic_write(path, ids.tobytes())
    return np.memmap(path, dtype=np.uint16, mode="r")


def min_corpus_tokens(block_size: int) -> int:
    """Smallest corpus whose validation split still holds one block plus its target."""
    n = block_size + 1
    while n - int(n * (1 - VAL_FRACTION)) < block_size + 1:
        n += 1
    return n


def prepare_data(source: str | None, tokenizer_kind: str, block_size: int, cache_dir: Path) -> Dataset:
    corpus = load_corpus(source, cache_dir)
    tokenizer = build_tokenizer(tokenizer_kind, corpus.text)
    tokens = encode_cached(corpus.text, tokenizer, cache_dir)
    need = min_corpus_tokens(block_size)
    if len(tokens) < need:
        raise DataError(
            f"data: corpus {corpus.name} is {len(tokens)} tokens long; block_size {block_size} needs at least {need} "
            f"(so the {VAL_FRACTION:.0%} validation split holds block_size+1 tokens)"
        )
    n_train = int(len(tokens) * (1 - VAL_FRACTION))
    return Dataset(tokens[:n_train], tokens[n_train:], tokenizer, corpus.name, corpus.note)
