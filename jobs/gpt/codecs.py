"""How parameters and deltas travel between the head and the pool's workers:
fp32, fp16, or integer codes with per-block scales (int8, int4), with error
feedback so that rounding is carried into the next message instead of lost."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.gpt.config import CODECS, ConfigError

# Values per scale: an outlier only coarsens its own block. 4-bit codes need
# smaller blocks than 8-bit ones to keep the same relative error.
BLOCK = {"int8": 256, "int4": 128}
LEVELS = {"int8": 127, "int4": 7}


# numpy converts to and from float16 one value at a time in software, and small
# values (most of a late delta) take its slow path: 35-50 ms for 0.8M of them.
# These do the same rounding (to nearest even) with whole-array integer operations,
# in place where they can (fresh pages are dear), and decode by table lookup.
_U32 = np.uint32
_F16_MAX = _U32((127 + 16) << 23)  # |x| >= 65536.0 rounds to infinity
_F32_INF = _U32(255 << 23)
_MIN_NORMAL = _U32(113 << 23)  # |x| < 2**-14 becomes subnormal
_DENORM_MAGIC = _U32(((127 - 15) + (23 - 10) + 1) << 23)  # 0.5: adding it rounds a subnormal's mantissa
_REBIAS = _U32((((15 - 127) << 23) + 0xFFF) % 2**32)  # float32 -> float16 exponent, and half an ulp less one
_F16_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


def to_fp16(vec: np.ndarray) -> np.ndarray:
    """float32 -> float16, bit for bit as numpy's astype."""
    x = np.ascontiguousarray(vec, dtype=np.float32)
    f = x.view(np.uint32) & _U32(0x7FFFFFFF)
    out = f >> _U32(13)  # the lowest kept bit: ties round to even
    out &= _U32(1)
    out += f
    out += _REBIAS
    out >>= _U32(13)
    with np.errstate(invalid="ignore"):  # signalling NaNs; they are replaced below
        small = (f.view(np.float32) + np.array(_DENORM_MAGIC).view(np.float32)).view(np.uint32)
    small -= _DENORM_MAGIC
    np.copyto(out, small, where=f < _MIN_NORMAL)
    np.copyto(out, _U32(0x7C00), where=f >= _F16_MAX)
    np.copyto(out, _U32(0x7E00), where=f > _F32_INF)
    out |= (x.view(np.uint32) >> _U32(16)) & _U32(0x8000)
    return out.astype(np.uint16).view(np.float16)


def from_fp16(half: np.ndarray) -> np.ndarray:
    return _F16_TABLE[half.view(np.uint16)]


@dataclass
class Packed:
    """A compressed flat float vector; `nbytes` is what travels."""

    codec: str
    data: np.ndarray
    scales: np.ndarray | None = None
    size: int = 0
    full: bool = True  # False: a change to apply to the receiver's copy (see Broadcast)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + (self.scales.nbytes if self.scales is not None else 0))


def encode(vec: np.ndarray, codec: str) -> Packed:
    vec = np.asarray(vec, dtype=np.float32)
    if codec == "fp32":
        return Packed("fp32", vec.copy(), size=vec.size)
    if codec == "fp16":
        return Packed("fp16", to_fp16(vec), size=vec.size)
    if codec in BLOCK:
        block, levels = BLOCK[codec], LEVELS[codec]
        blocks = np.pad(vec, (0, (-vec.size) % block)).reshape(-1, block)
        scales = (np.abs(blocks).max(axis=1) / levels).astype(np.float32)
        safe = np.where(scales > 0, scales, 1.0)
        q = np.clip(np.rint(blocks / safe[:, None]), -levels, levels).astype(np.int8).reshape(-1)
        if codec == "int4":  # two codes per byte
            u = (q + 8).astype(np.uint8)
            q = (u[0::2] | (u[1::2] << 4)).astype(np.uint8)
            return Packed(codec, q, scales, size=vec.size)
        return Packed(codec, q[: vec.size], scales, size=vec.size)
    raise ConfigError(f"codec: expected one of {', '.join(CODECS)}, got {codec!r}")


_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8, "int4": np.uint8}


def packed_problem(codec: object, data: object, scales: object, size: object, want_codec: str,
                   want_size: int) -> str | None:
    """Why a message that says it is a `want_codec` vector of `want_size` values is
    not one (one line), or None. Anything that crossed the network is checked
    before `decode` touches it: its codec, size, array types and lengths, and
    the scales' finiteness."""
    if codec != want_codec:
        return f"codec: expected {want_codec}, got {str(codec)[:20]!r}"
    if isinstance(size, bool) or not isinstance(size, int) or size != want_size:
        return f"size: expected {want_size} values, got {str(size)[:20]}"
    if not isinstance(data, np.ndarray) or data.dtype != _DTYPES[codec] or data.ndim != 1:
        return f"data: expected a flat {np.dtype(_DTYPES[codec]).name} array"
    if codec in BLOCK:
        blocks = -(-size // BLOCK[codec])
        length = blocks * BLOCK[codec] // 2 if codec == "int4" else size
        if not isinstance(scales, np.ndarray) or scales.dtype != np.float32 or scales.shape != (blocks,):
            return f"scales: expected {blocks} float32 scales"
        if not np.isfinite(scales).all() or (scales < 0).any():
            return "scales: expected finite, non-negative scales"
    else:
        length = size
        if scales is not None:
            return "scales: expected none for this codec"
    if data.size != length:
        return f"data: expected {length} codes, got {data.size}"
    return None


def decode(p: Packed) -> np.ndarray:
    if p.codec in BLOCK:
        assert p.scales is not None
        block = BLOCK[p.codec]
        if p.codec == "int4":
            codes = np.empty(p.data.size * 2, dtype=np.int8)
            codes[0::2] = (p.data & 0x0F).astype(np.int8) - 8
            codes[1::2] = (p.data >> 4).astype(np.int8) - 8
        else:
            codes = np.pad(p.data, (0, (-p.size) % block))
        blocks = codes.reshape(-1, block).astype(np.float32) * p.scales[:, None]
        return blocks.reshape(-1)[: p.size]
    if p.codec == "fp16":
        return from_fp16(p.data)
    return p.data.astype(np.float32)


class ErrorFeedback:
    """Lossy codes with memory: what a message could not carry is added to the
    next one, so rounding errors never accumulate (only delay by a round)."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.residual: np.ndarray | None = None

    def encode(self, vec: np.ndarray) -> Packed:
        want = vec if self.residual is None else vec + self.residual
        packed = encode(want, self.codec)
        if self.codec != "fp32":
            self.residual = want - decode(packed)
        return packed


class Broadcast:
    """The global parameters going out each round, as a change to what every
    worker already holds: `held` is exactly the copy on every worker that took the
    last round, since all decode the same bytes the same way. New workers get
    `held` whole, in fp32. With fp32 the parameters go out whole every time."""

    def __init__(self, params: np.ndarray, codec: str) -> None:
        self.codec = codec
        self.held = np.array(params, dtype=np.float32)

    def message(self, params: np.ndarray) -> Packed:
        if self.codec == "fp32":
            self.held = np.array(params, dtype=np.float32)
            return encode(self.held, "fp32")
        change = encode(params - self.held, self.codec)
        self.held = self.held + decode(change)
        change.full = False
        return change

    def full(self) -> Packed:
        return encode(self.held, "fp32")
