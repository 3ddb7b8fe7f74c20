"""Quantize float weights into GGUF's block types: Q8_0, Q4_0, Q4_1, and F32/F16/BF16 as is.

A quantized row is cut into blocks of 32 weights; each block stores its own fp16 scale `d`
(and for Q4_1 an fp16 minimum `m`) followed by the integers:

| type | bytes per 32 | stored                      | a weight is            | error at most        |
|------|--------------|-----------------------------|------------------------|----------------------|
| Q8_0 | 34           | d, 32 x int8 q              | d·q                    | d/2, d = amax/127    |
| Q4_0 | 18           | d, 16 bytes of nibbles      | d·(q - 8)              | |d|, d = -vmax/8     |
| Q4_1 | 20           | d, m, 16 bytes of nibbles   | d·q + m                | d/2, d = (max-min)/15|

(plus the rounding of d and m to fp16). Q4_0's scale is signed so that the weight of largest
magnitude lands exactly on level -8, the one level that has no mirror (+8 does not exist);
the other end then clips at +7, which is where its error of a whole step comes from. In both
4-bit types byte j of a block holds weight j in its low nibble and weight j + 16 in its high one.

These follow llama.cpp's reference quantizers (ggml/src/ggml-quants.c, `quantize_row_q8_0_ref`,
`quantize_row_q4_0_ref`, `quantize_row_q4_1_ref`; bf16 as `ggml_compute_fp32_to_bf16` in
ggml-impl.h) step by step in float32 — the same roundings in the same order — so the bytes are
the ones llama.cpp's own tools write (tests/interop/test_gguf_quantize.py holds them equal to
the `gguf` package's). Reading blocks back is gguf_dequant.py's job.

    python -c "import numpy as np; from lmstack.interop.gguf_quantize import quantize;
               print(quantize(np.ones((2, 32), np.float32), 'Q8_0').shape)"   # (2, 34)

Tests: `pytest tests/interop/test_gguf_quantize.py lmstack/interop/gguf_quantize.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lmstack.errors import ConfigError

BLOCK = 32  # weights per block in every type here
F32 = np.float32


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """(n, 1) float32 -> (n, 2) uint8: IEEE half, round to nearest even, little-endian."""
    return x.astype("<f2").view(np.uint8)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d in float32, and 0 where d is 0 (an all-zero block quantizes to zeros)."""
    safe = np.where(d == 0, F32(1), d)
    return np.where(d == 0, F32(0), F32(1) / safe).astype(F32)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: to the nearest integer, halves away from zero (numpy's round goes to even).

    >>> round_half_away(np.array([0.5, 1.5, 2.5, -0.5, 0.49999997], np.float32)).tolist()
    [1.0, 2.0, 3.0, -1.0, 0.0]
    """
    whole = np.trunc(x)
    frac = x - whole  # exact: removing the integer part of a float loses no bits
    return np.where(np.abs(frac) >= 0.5, whole + np.sign(x), whole)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) levels 0..15 -> (n, 16) bytes: weight j low, weight j + 16 high."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def quantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """(n, 32) float32 -> (n, 34) bytes: fp16 d = amax/127, then 32 x int8 roundf(x/d).

    >>> b = quantize_q8_0(np.linspace(-1, 1, 32, dtype=np.float32)[None])
    >>> float(b[0, :2].view(np.float16)[0]) == float(np.float16(1 / 127)), b[0, 2:].view(np.int8)[[0, 1, 31]].tolist()
    (True, [-127, -119, 127])
    """
    amax = np.abs(blocks).max(axis=1, keepdims=True)             # (n, 1)
    d = (amax / F32(127)).astype(F32)
    q = round_half_away(blocks * _inverse(d)).astype(np.int8)   # (n, 32), in -127..127
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


def quantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """(n, 32) float32 -> (n, 18) bytes: fp16 d = vmax/-8 (vmax: the entry of largest
    magnitude, sign kept), then nibbles min(15, trunc(x/d + 8.5)).

    >>> x = np.zeros((1, 32), np.float32); x[0, 0], x[0, 1] = -4.0, 4.0
    >>> b = quantize_q4_0(x)
    >>> float(b[0, :2].view(np.float16)[0]), int(b[0, 2] & 15), int(b[0, 3] & 15), int(b[0, 4] & 15)
    (0.5, 0, 15, 8)
    """
    where = np.abs(blocks).argmax(axis=1)[:, None]               # first of largest magnitude
    vmax = np.take_along_axis(blocks, where, axis=1)             # (n, 1), sign kept
    d = (vmax / F32(-8)).astype(F32)
    shifted = blocks * _inverse(d) + F32(8.5)                    # (n, 32), in [0.5, 16.5]
    q = np.minimum(np.trunc(shifted), 15)                        # C's (int8_t) cast truncates
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def quantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    """(n, 32) float32 -> (n, 20) bytes: fp16 d = (max - min)/15, fp16 m = min, then nibbles
    min(15, trunc((x - min)/d + 0.5)).

    >>> x = np.arange(32, dtype=np.float32)[None] / 2      # 0, 0.5, ..., 15.5
    >>> b = quantize_q4_1(x)
    >>> b[0, :4].view(np.float16).tolist(), int(b[0, 4] & 15), int(b[0, 4] >> 4)
    ([1.033203125, 0.0], 0, 8)
    """
    lo = blocks.min(axis=1, keepdims=True)                       # (n, 1)
    hi = blocks.max(axis=1, keepdims=True)
    d = ((hi - lo) / F32(15)).astype(F32)
    shifted = (blocks - lo) * _inverse(d) + F32(0.5)             # (n, 32), in [0.5, 15.5]
    q = np.minimum(np.trunc(shifted), 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], axis=1)


def quantize_f32(values: np.ndarray) -> np.ndarray:
    """float32 as little-endian bytes (4 per weight)."""
    return values.astype("<f4").view(np.uint8)


def quantize_f16(values: np.ndarray) -> np.ndarray:
    """IEEE half, round to nearest even (2 bytes per weight).

    >>> quantize_f16(np.array([[1.0]], np.float32)).tolist()
    [[0, 60]]
    """
    return values.astype("<f2").view(np.uint8)


def quantize_bf16(values: np.ndarray) -> np.ndarray:
    """bfloat16 (the top 16 bits of a float32), round to nearest even, NaN kept quiet.

    >>> quantize_bf16(np.array([[1.0, 1.00390625, 1.01171875]], np.float32)).view("<u2").tolist()
    [[16256, 16256, 16258]]
    """
    bits = values.astype("<f4").view("<u4").astype(np.uint64)   # room for the carry
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16         # ties go to the even half
    quiet = (bits >> 16) | 64                                    # set the quiet bit of a NaN
    return np.where(nan, quiet, rounded).astype("<u2").view(np.uint8)


BLOCK_QUANTIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1}
PLAIN_QUANTIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "F32": quantize_f32, "F16": quantize_f16, "BF16": quantize_bf16}
TYPES = (*PLAIN_QUANTIZERS, *BLOCK_QUANTIZERS)  # every type this module writes


def quantize(values: np.ndarray, type_name: str) -> np.ndarray:
    """Rows of floats (..., n) -> their bytes (..., row_bytes) in a GGUF type (F32, F16, BF16,
    Q8_0, Q4_0, Q4_1); a block type needs n to be a multiple of 32.

    >>> quantize(np.zeros((3, 64), np.float32), "Q4_1").shape
    (3, 40)
    """
    values = np.ascontiguousarray(values, dtype=F32)
    if type_name in PLAIN_QUANTIZERS:
        return PLAIN_QUANTIZERS[type_name](values).reshape(*values.shape[:-1], -1)
    if type_name not in BLOCK_QUANTIZERS:
        raise ConfigError(f"GGUF type {type_name!r} cannot be written; choose one of {', '.join(TYPES)}")
    n = values.shape[-1]
    if n % BLOCK:
        raise ConfigError(f"{type_name} needs rows whose length is a multiple of {BLOCK}, got "
                          f"{n}; use F16 for this tensor")
    blocks = values.reshape(-1, BLOCK)                           # (rows · n/32, 32)
    return BLOCK_QUANTIZERS[type_name](blocks).reshape(*values.shape[:-1], -1)
