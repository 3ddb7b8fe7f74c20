"""Our GGUF quantizers against the `gguf` package (llama.cpp's gguf-py), byte for byte, and the
error bound of each type as a hypothesis property, with a broken quantizer that breaks it."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lmstack.errors import ConfigError
from lmstack.interop import gguf_quantize as gq
from lmstack.interop.gguf_quantize import TYPES, quantize

BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1")


def reference_bytes(x: np.ndarray, name: str) -> np.ndarray:
    """What gguf-py writes for x, as (..., row_bytes) uint8."""
    out = gguf_quantize(x, GGMLQuantizationType[name])
    return np.ascontiguousarray(out).view(np.uint8).reshape(*x.shape[:-1], -1)


def dequantized(raw: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Bytes back to floats with gguf-py, in the original shape."""
    return gguf_dequantize(raw, GGMLQuantizationType[name]).reshape(shape)


def _f16(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).astype(np.float64)


def error_bound(x: np.ndarray, name: str) -> np.ndarray:
    """The most a weight of x may move in type `name` (same shape as x): the rounding step of
    its block (see gguf_quantize.py's table) plus the fp16 rounding of the block's d and m, and
    a sliver for float32 arithmetic."""
    x64 = x.astype(np.float64)
    if name == "F32":
        return np.zeros_like(x64)
    if name == "F16":  # half a unit in the last place, normal or subnormal
        return np.abs(x64) * 2.0 ** -11 + 2.0 ** -25
    if name == "BF16":  # half a unit in the last place; float32 subnormals flush to zero, as
        # llama.cpp's and gguf-py's conversions do
        return np.where(np.abs(x64) < 2.0 ** -126, np.abs(x64), np.abs(x64) * 2.0 ** -8)
    blocks = x64.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    if name == "Q8_0":
        d = amax / 127
        bound = d / 2 + 127 * np.abs(d - _f16(d))
    elif name == "Q4_0":
        d = amax / 8  # |vmax / -8|: the clipped end (+8 does not exist) is off by a whole step
        bound = d + 8 * np.abs(d - _f16(d))
    else:
        lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
        d = (hi - lo) / 15
        bound = d / 2 + 15 * np.abs(d - _f16(d)) + np.abs(lo - _f16(lo))
    slack = 1e-6 * amax + 1e-30
    return np.broadcast_to(bound + slack, blocks.shape).reshape(x.shape)


def edge_blocks() -> np.ndarray:
    """Blocks where rounding rules show: zeros, constants, ties at .5, a negative extreme, the
    largest magnitude twice with both signs, tiny (fp16-subnormal) scales."""
    rows = [np.zeros(32), np.full(32, 3.0), np.full(32, -2.0),
            np.arange(32) - 15.5,                      # Q8_0 ties after scaling
            np.concatenate([[127.0], np.arange(31) + 0.5]),
            np.concatenate([[-8.0], np.linspace(-7.5, 7.5, 31)]),
            np.concatenate([[5.0, -5.0], np.linspace(-1, 1, 30)]),
            np.concatenate([[-5.0, 5.0], np.linspace(-1, 1, 30)]),
            np.arange(32) / 2.0,                       # Q4_1 ties
            np.linspace(-1e-6, 1e-6, 32)]
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("name", TYPES)
def test_bytes_equal_gguf_package(name):
    rng = np.random.default_rng(0)
    tensors = [edge_blocks(), rng.standard_normal((7, 96)).astype(np.float32),
               (rng.standard_normal((3, 4, 64)) * 1e-3).astype(np.float32),
               (rng.standard_t(2, (16, 256)) * 30).astype(np.float32)]
    for x in tensors:
        ours = quantize(x, name)
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, reference_bytes(x, name))


@pytest.mark.parametrize("name", ["F16", "BF16"])
def test_specials_of_the_float_types(name):
    x = np.array([[np.nan, np.inf, -np.inf, -0.0, 1e-40, 65504.0, 70000.0, 3.4e38]], np.float32)
    np.testing.assert_array_equal(quantize(x, name), reference_bytes(x, name))


finite = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
blocks_of = arrays(np.float32, st.tuples(st.integers(1, 4), st.just(32)), elements=finite)


@settings(max_examples=60, deadline=None)
@given(x=blocks_of, scale=st.sampled_from([1.0, 1e-3, 1e-6]), name=st.sampled_from(TYPES))
def test_round_trip_error_within_the_types_bound(x, scale, name):
    x = (x * np.float32(scale)).astype(np.float32)
    back = dequantized(quantize(x, name), name, x.shape)
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    assert (err <= error_bound(x, name)).all()


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_the_bound_is_tight(name):
    """Negative control, part 1: on ordinary weights the worst error comes near the bound, so
    the property would notice a quantizer a little worse than llama.cpp's."""
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    err = np.abs(dequantized(quantize(x, name), name, x.shape) - x)
    assert (err / error_bound(x, name)).max() > 0.9


def test_a_quantizer_that_truncates_breaks_the_bound(monkeypatch):
    """Negative control, part 2: Q8_0 rounding toward zero (a plausible bug) exceeds it."""
    x = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    monkeypatch.setattr(gq, "round_half_away", np.trunc)
    err = np.abs(dequantized(quantize(x, "Q8_0"), "Q8_0", x.shape) - x)
    assert (err > error_bound(x, "Q8_0")).any()


def test_bad_requests_are_one_line_errors():
    with pytest.raises(ConfigError, match="multiple of 32"):
        quantize(np.zeros((2, 48), np.float32), "Q8_0")
    with pytest.raises(ConfigError, match="Q5_K.*cannot be written"):
        quantize(np.zeros((2, 256), np.float32), "Q5_K")
