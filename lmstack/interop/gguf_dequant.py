"""Dequantize ggml's tensor types to float32, vectorized with numpy.

Each function takes `blocks`, a (n_blocks, block_bytes) uint8 array, and returns the
(n_blocks, block_size) float32 values. The layouts are ggml's (ggml-common.h, the `block_*`
structs; the arithmetic of ggml-quants.c's `dequantize_row_*`); fp16 numbers are
little-endian IEEE half. `DEQUANTIZE` maps a type name to its function; `dequantize(raw, name)`
applies it to a tensor's rows as `GGUFFile.raw` gives them.

Legacy types, blocks of 32 weights x with one scale d (and a minimum m):

    Q8_0  d, 32 x int8 q                     x = d q
    Q4_0  d, 16 bytes of nibbles             x = d (q - 8)      q in 0..15
    Q4_1  d, m, 16 bytes of nibbles          x = d q + m
    Q5_0  d, 32 high bits, nibbles           x = d (q - 16)     q in 0..31
    Q5_1  d, m, 32 high bits, nibbles        x = d q + m
    (nibbles: byte j holds weight j in its low half and weight j + 16 in its high half)

K-quants ("super-blocks" of 256 weights in 16 or 8 sub-blocks, each with its own small
integer scale, the scales themselves scaled by a per-super-block fp16 d):

    Q2_K  16 sub-blocks of 16, 4-bit scale and 4-bit min each   x = d sc q - dmin m, q in 0..3
    Q3_K  16 sub-blocks of 16, 6-bit signed scales              x = d (sc - 32) q, q in -4..3
    Q4_K  8 sub-blocks of 32, 6-bit scale and min (12 bytes)    x = d sc q - dmin m, q in 0..15
    Q5_K  as Q4_K with a fifth bit per weight                   q in 0..31
    Q6_K  16 sub-blocks of 16, int8 scales                      x = d sc q, q in -32..31

Tests: `pytest lmstack/interop/gguf_dequant.py tests/interop/test_gguf_dequant.py` (against
`gguf.quants.dequantize`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lmstack.errors import ConfigError
from lmstack.interop.gguf_file import GGML_TYPE_NAMES


def _f16(b: np.ndarray) -> np.ndarray:
    """(n, 2) bytes of little-endian fp16 -> (n, 1) float32."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k) values 0..15: every low nibble, then every high one."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(b: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 8k) bits 0/1, least significant bit of byte 0 first."""
    return np.unpackbits(b, axis=-1, bitorder="little")


def block_example(d: float, rest: bytes, m: float | None = None) -> np.ndarray:
    """One legacy block as a (1, bytes) array: fp16 d, maybe fp16 m, then `rest` (doctests)."""
    head = np.float16(d).tobytes() + (b"" if m is None else np.float16(m).tobytes())
    return np.frombuffer(head + rest, np.uint8)[None]


# ---- plain floats ---------------------------------------------------------------------------

def dequantize_f32(blocks: np.ndarray) -> np.ndarray:
    """F32: 4 bytes per value.

    >>> dequantize_f32(np.frombuffer(np.float32([1.5, -2]).tobytes(), np.uint8).reshape(2, 4))
    array([[ 1.5],
           [-2. ]], dtype=float32)
    """
    return np.ascontiguousarray(blocks).view("<f4").astype(np.float32, copy=False)


def dequantize_f16(blocks: np.ndarray) -> np.ndarray:
    """F16: IEEE half.

    >>> dequantize_f16(np.frombuffer(np.float16([0.5, 65504]).tobytes(), np.uint8).reshape(2, 2))
    array([[5.0000e-01],
           [6.5504e+04]], dtype=float32)
    """
    return _f16(blocks)


def dequantize_bf16(blocks: np.ndarray) -> np.ndarray:
    """BF16: the top 16 bits of a float32.

    >>> dequantize_bf16(np.array([[0x80, 0x3F], [0xC0, 0xBF]], np.uint8))  # 0x3F80, 0xBFC0
    array([[ 1. ],
           [-1.5]], dtype=float32)
    """
    return (np.ascontiguousarray(blocks).view("<u2").astype(np.uint32) << 16).view(np.float32)


# ---- legacy blocks of 32 --------------------------------------------------------------------

def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Q8_0: d (fp16), 32 int8 q; x = d q.

    >>> dequantize_q8_0(block_example(0.5, bytes(range(32))))[0, :4]
    array([0. , 0.5, 1. , 1.5], dtype=float32)
    """
    return _f16(blocks[:, :2]) * blocks[:, 2:].view(np.int8).astype(np.float32)


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0: d, 16 bytes of nibbles; x = d (q - 8).

    >>> y = dequantize_q4_0(block_example(2.0, bytes([0x9F] * 16)))  # low nibble 15, high 9
    >>> float(y[0, 0]), float(y[0, 16])
    (14.0, 2.0)
    """
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
    return _f16(blocks[:, :2]) * q.astype(np.float32)


def q4_1_parts(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Q4_1 block's (q (n, 32) uint8 in 0..15, d (n, 1), m (n, 1) float32): x = d q + m.
    Exactly lmstack's int4 group-32 layout with a float zero (gguf_model.py loads it so).

    >>> q, d, m = q4_1_parts(block_example(0.25, bytes([0x31] * 16), m=-1.0))
    >>> q[0, :2].tolist(), q[0, 16:18].tolist(), float(d[0, 0]), float(m[0, 0])
    ([1, 1], [3, 3], 0.25, -1.0)
    """
    return _nibbles(blocks[:, 4:]), _f16(blocks[:, :2]), _f16(blocks[:, 2:4])


def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_1: d, m, 16 bytes of nibbles; x = d q + m.

    >>> y = dequantize_q4_1(block_example(0.25, bytes([0x31] * 16), m=-1.0))
    >>> float(y[0, 0]), float(y[0, 16])
    (-0.75, -0.25)
    """
    q, d, m = q4_1_parts(blocks)
    return d * q.astype(np.float32) + m


def _q5_values(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """5-bit values 0..31: the nibbles, plus 16 where bit j of the u32 `qh` is set (weight j)."""
    return _nibbles(qs) | (_bits(qh) << 4)


def dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    """Q5_0: d, 4 bytes of high bits, 16 bytes of nibbles; x = d (q - 16).

    >>> y = dequantize_q5_0(block_example(1.0, bytes([1, 0, 0, 0]) + bytes([0x22] * 16)))
    >>> y[0, :2]  # weight 0 has its high bit set: 2 + 16 - 16; weight 1 does not: 2 - 16
    array([  2., -14.], dtype=float32)
    """
    q = _q5_values(blocks[:, 2:6], blocks[:, 6:]).astype(np.int8) - np.int8(16)
    return _f16(blocks[:, :2]) * q.astype(np.float32)


def dequantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    """Q5_1: d, m, 4 bytes of high bits, 16 bytes of nibbles; x = d q + m.

    >>> y = dequantize_q5_1(block_example(0.5, bytes([0, 0, 0, 0x80]) + bytes(16), m=1.0))
    >>> float(y[0, 30]), float(y[0, 31])  # only weight 31 has its high bit: 0.5 * 16 + 1
    (1.0, 9.0)
    """
    q = _q5_values(blocks[:, 4:8], blocks[:, 8:])
    return _f16(blocks[:, :2]) * q.astype(np.float32) + _f16(blocks[:, 2:4])


# ---- K-quants: super-blocks of 256 ----------------------------------------------------------

def _crumbs(qs: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K low bits, (n, 64) bytes -> (n, 256) values 0..3: each half of 128 weights
    reads 32 bytes, bits 0-1 of them for weights 0..31, bits 2-3 for 32..63, and so on."""
    n = qs.shape[0]
    halves = qs.reshape(n, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return ((halves >> shifts) & 3).reshape(n, 256)


def dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    """Q2_K: 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit q, d, dmin;
    weight i in sub-block i // 16: x = d sc q - dmin m.

    >>> b = np.frombuffer(bytes([0x12] * 16) + bytes([0xE4] * 64)  # sc 2, m 1; q by bit pair
    ...                   + np.float16(1).tobytes() + np.float16(0.5).tobytes(), np.uint8)[None]
    >>> dequantize_q2_k(b)[0, ::32]  # 2 q - 0.5
    array([-0.5,  1.5,  3.5,  5.5, -0.5,  1.5,  3.5,  5.5], dtype=float32)
    """
    n = blocks.shape[0]
    sc = blocks[:, :16]
    d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
    q = _crumbs(blocks[:, 16:80]).reshape(n, 16, 16).astype(np.float32)
    dl = d * (sc & 0x0F).astype(np.float32)  # (n, 16): one per sub-block
    ml = dmin * (sc >> 4).astype(np.float32)
    return (dl[..., None] * q - ml[..., None]).reshape(n, 256)


def q3_k_scales(b: np.ndarray) -> np.ndarray:
    """Q3_K's 16 signed 6-bit scales from 12 bytes: the low 4 bits of scale j are nibble j // 8
    of byte j % 8, the top 2 bits are bits 2 (j // 4) of byte 8 + j % 4; minus 32.

    >>> q3_k_scales(np.array([[0x21] * 8 + [0b11100100] * 4], np.uint8))[0].tolist()
    [-31, -31, -31, -31, -15, -15, -15, -15, 2, 2, 2, 2, 18, 18, 18, 18]
    """
    n = b.shape[0]
    low = np.concatenate([b[:, :8] & 0x0F, b[:, :8] >> 4], axis=1)  # (n, 16)
    shifts = np.array([0, 2, 4, 6], np.uint8).repeat(4)             # scale j: 2 * (j // 4)
    high = (np.tile(b[:, 8:12], (1, 4)) >> shifts) & 3
    return (low | (high << 4)).astype(np.int8).reshape(n, 16) - np.int8(32)


def dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    """Q3_K: 32 bytes hmask, 64 bytes of 2-bit q, 12 bytes of scales, d. Weight i takes its
    third bit from byte i % 32 of hmask, bit i // 32; q = low - (4 if that bit is clear);
    x = d (sc - 32) q.

    >>> b = np.frombuffer(bytes([0xFF] * 32) + bytes([0x01] * 64)  # bit set everywhere; low 1, 0
    ...                   + bytes([0x22] * 8 + [0xAA] * 4) + np.float16(0.5).tobytes(),
    ...                   np.uint8)[None]
    >>> dequantize_q3_k(b)[0, :64:16]  # scale (2 | 2 << 4) - 32 = 2: 0.5 * 2 * 1, then 0
    array([1., 1., 0., 0.], dtype=float32)
    """
    n = blocks.shape[0]
    hbit = _bits(blocks[:, :32]).reshape(n, 32, 8).transpose(0, 2, 1).reshape(n, 256)
    q = _crumbs(blocks[:, 32:96]).astype(np.int8) - np.where(hbit, 0, 4).astype(np.int8)
    dl = _f16(blocks[:, 108:110]) * q3_k_scales(blocks[:, 96:108]).astype(np.float32)  # (n, 16)
    return (dl[..., None] * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


def k4_scales_mins(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 8 six-bit scales and mins from 12 bytes (ggml's get_scale_min_k4): for
    j < 4 the low 6 bits of bytes j and j + 4; for j >= 4 the nibbles of byte j + 4 topped with
    the 2 high bits of bytes j - 4 and j.

    >>> packed = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 0x21, 0x43, 0x65, 0x87]], np.uint8)
    >>> sc, m = k4_scales_mins(packed)
    >>> sc[0].tolist(), m[0].tolist()
    ([1, 2, 3, 4, 1, 3, 5, 7], [5, 6, 7, 8, 2, 4, 6, 8])
    """
    lo4, hi4, last = b[:, 0:4], b[:, 4:8], b[:, 8:12]
    sc = np.concatenate([lo4 & 63, (last & 0x0F) | ((lo4 >> 6) << 4)], axis=1)
    m = np.concatenate([hi4 & 63, (last >> 4) | ((hi4 >> 6) << 4)], axis=1)
    return sc, m


def _k4_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 128) bytes -> (n, 256) values: each 64 weights read 32 bytes, low nibbles then high."""
    n = qs.shape[0]
    return _nibbles(qs.reshape(n * 4, 32)).reshape(n, 256)


def _k4_apply(blocks: np.ndarray, q: np.ndarray) -> np.ndarray:
    """x = d sc q - dmin m over the 8 sub-blocks of 32 (Q4_K and Q5_K)."""
    n = blocks.shape[0]
    sc, m = k4_scales_mins(blocks[:, 4:16])
    d1 = _f16(blocks[:, 0:2]) * sc.astype(np.float32)    # (n, 8)
    m1 = _f16(blocks[:, 2:4]) * m.astype(np.float32)
    return (d1[..., None] * q.reshape(n, 8, 32).astype(np.float32) - m1[..., None]).reshape(n, 256)


def dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """Q4_K: d, dmin, 12 bytes of scales/mins, 128 bytes of nibbles; x = d sc q - dmin m.

    >>> b = np.frombuffer(np.float16(1).tobytes() + np.float16(0.5).tobytes()
    ...     + bytes([1, 2, 3, 4, 5, 6, 7, 8, 0x21, 0x43, 0x65, 0x87]) + bytes([0x21] * 128),
    ...     np.uint8)[None]
    >>> dequantize_q4_k(b)[0, ::32]  # q 1 (low nibbles), 2 (high): sc q - m / 2
    array([-1.5,  1. , -0.5,  4. ,  0. ,  4. ,  2. , 10. ], dtype=float32)
    """
    return _k4_apply(blocks, _k4_nibbles(blocks[:, 16:144]))


def dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    """Q5_K: as Q4_K, with 32 bytes qh before the nibbles: weight i adds 16 if bit i // 32 of
    byte i % 32 is set.

    >>> b = np.frombuffer(np.float16(1).tobytes() + np.float16(0).tobytes() + bytes([1] * 12)
    ...     + bytes([0x01] * 32) + bytes(128), np.uint8)[None]
    >>> dequantize_q5_k(b)[0, ::32]  # bit 0 of each qh byte: the first 32 weights
    array([16.,  0.,  0.,  0.,  0.,  0.,  0.,  0.], dtype=float32)
    """
    n = blocks.shape[0]
    hbit = _bits(blocks[:, 16:48]).reshape(n, 32, 8).transpose(0, 2, 1).reshape(n, 256)
    return _k4_apply(blocks, _k4_nibbles(blocks[:, 48:176]) | (hbit << 4))


def dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Q6_K: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 int8 scales, d; each half
    of 128 weights reads 64 bytes of ql and 32 of qh: weights 32k + l (k 0..3, l 0..31) take
    nibble k // 2 of ql[l + 32 (k % 2)] and bits 2k of qh[l]; x = d sc (q - 32).

    >>> b = np.frombuffer(bytes([0x10] * 128) + bytes([0b11100100] * 64) + bytes([1] * 16)
    ...                   + np.float16(0.5).tobytes(), np.uint8)[None]
    >>> dequantize_q6_k(b)[0, :128:32]  # q = (0 | 0 << 4), (0 | 1 << 4), (1 | 2 << 4), (1 | 3 << 4)
    array([-16. ,  -8. ,   0.5,   8.5], dtype=float32)
    """
    n = blocks.shape[0]
    ql = blocks[:, :128].reshape(n, 2, 1, 2, 32)                 # half, -, k % 2, l
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)           # (n, 2, 2, 2, 32): k // 2 outer
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32)
    high = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3  # (n, 2, 4, 32)
    q = (low.reshape(n, 2, 4, 32) | (high << 4)).astype(np.int8) - np.int8(32)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)   # (n, 16)
    scale = _f16(blocks[:, 208:210]) * sc
    return (scale[..., None] * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


# ---- the registry ---------------------------------------------------------------------------

DEQUANTIZE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "F32": dequantize_f32, "F16": dequantize_f16, "BF16": dequantize_bf16,
    "Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1,
    "Q5_0": dequantize_q5_0, "Q5_1": dequantize_q5_1,
    "Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k, "Q4_K": dequantize_q4_k,
    "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k,
}


def check_supported(type_name: str, where: str) -> None:
    """ConfigError unless `type_name` is one lmstack dequantizes (naming it, and `where`)."""
    if type_name not in DEQUANTIZE:
        raise ConfigError(f"{where} is stored as {type_name}, a ggml type lmstack does not read "
                          f"(it reads {', '.join(DEQUANTIZE)}); re-quantize the model to one of "
                          "them, e.g. with llama.cpp's llama-quantize to Q4_K_M")


def dequantize(raw: np.ndarray, type_name: str) -> np.ndarray:
    """float32 values of a tensor's stored rows, (..., row_bytes) uint8 -> (..., row_elements).

    >>> raw = np.frombuffer(np.float16([1, 2, 3, 4]).tobytes(), np.uint8).reshape(2, 4)
    >>> dequantize(raw, "F16")
    array([[1., 2.],
           [3., 4.]], dtype=float32)
    """
    check_supported(type_name, "the tensor")
    blocks = raw.reshape(-1, GGML_TYPE_NAMES[type_name].block_bytes)
    return DEQUANTIZE[type_name](blocks).reshape(*raw.shape[:-1], -1)
