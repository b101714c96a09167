"""Character-level and byte-level tokenizers, serialisable to plain dicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class TokenizerError(ValueError):
    """Text a tokenizer cannot encode; one line naming the field."""


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, *, field: str = "text") -> np.ndarray: ...

    def decode(self, ids: Any) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CharTokenizer:
    """One id per distinct character of the training corpus, in code-point order."""

    chars: str
    kind: str = "char"

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, *, field: str = "text") -> np.ndarray:
        # Vectorised: code points via UTF-32, then a binary search in the sorted vocabulary.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(vocab, codes)
        ids_clipped = np.minimum(ids, len(vocab) - 1)
        unknown = vocab[ids_clipped] != codes
        if unknown.any():
            bad = chr(int(codes[int(np.argmax(unknown))]))
            raise TokenizerError(
                f"{field}: character {bad!r} is not in the tokenizer's vocabulary "
                f"({self.vocab_size} characters from the training corpus)"
            )
        return ids.astype(np.int64)

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids, dtype=np.int64).tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars}


@dataclass(frozen=True)
class ByteTokenizer:
    """The 256 byte values of UTF-8: encodes any text, needs no vocabulary."""

    kind: str = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str, *, field: str = "text") -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Any) -> str:
        # A sampled byte sequence may cut a multi-byte character: show it, don't fail.
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "byte"}


def build_tokenizer(kind: str, text: str) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "byte":
        return ByteTokenizer()
    raise TokenizerError(f"tokenizer: expected 'char' or 'byte', got {kind!r}")


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "char" and isinstance(data.get("chars"), str) and data["chars"]:
        chars = data["chars"]
        if "".join(sorted(set(chars))) != chars:  # encode() relies on sorted, distinct chars
            raise TokenizerError("tokenizer: expected chars to be distinct and in code-point order")
        return CharTokenizer(chars)
    if kind == "byte":
        return ByteTokenizer()
    raise TokenizerError(f"tokenizer: expected a dict with kind 'char' (and chars) or 'byte', got {data!r:.80}")
