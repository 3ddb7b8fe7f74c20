"""Our dequantization of every ggml type we read equals the `gguf` package's, bit for bit: on
data it quantized where it can quantize the type, and on random blocks (random bytes, finite
fp16 scales) for every type."""

from __future__ import annotations

import numpy as np
import pytest

from tests.interop.gguf_fixtures import FP16_AT, QUANTIZABLE, TYPES, Q, gguf

from lmstack.errors import ConfigError  # noqa: E402
from lmstack.interop.gguf_dequant import DEQUANTIZE, dequantize  # noqa: E402


def random_blocks(qtype: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, 2 blocks' bytes) random bytes with finite fp16 scales where the type has them."""
    size, nbytes = gguf.GGML_QUANT_SIZES[Q[qtype]]
    if qtype in ("F32", "F16"):  # random bytes would hold NaNs: random numbers instead
        dtype = np.float32 if qtype == "F32" else np.float16
        values = rng.standard_normal((rows, 512)).astype(dtype)
        return values.view(np.uint8)
    raw = rng.integers(0, 256, (rows, 512 // size * nbytes), dtype=np.uint8)
    blocks = raw.reshape(-1, nbytes)
    for at in FP16_AT.get(qtype, ()):
        scale = rng.standard_normal((len(blocks), 1)).astype(np.float16)
        blocks[:, at:at + 2] = scale.view(np.uint8)
    return raw


def test_the_registry_covers_the_types_the_issue_names():
    assert list(DEQUANTIZE) == TYPES


@pytest.mark.parametrize("qtype", TYPES)
def test_random_blocks_match_gguf(qtype):
    raw = random_blocks(qtype, 6, np.random.default_rng(0))
    ours = dequantize(raw, qtype)
    theirs = gguf.quants.dequantize(raw, Q[qtype])
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (6, 512)
    # bf16 random bytes may hold NaN: equal where both are NaN too
    np.testing.assert_array_equal(ours, theirs)
    assert len(np.unique(ours)) > 64  # varied values: equality is not trivial


@pytest.mark.parametrize("qtype", sorted(QUANTIZABLE))
def test_gguf_quantized_data_matches_gguf(qtype):
    w = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    raw = gguf.quants.quantize(w, Q[qtype])
    raw = raw.view(np.uint8).reshape(8, -1)  # F32/F16 come back as floats: their bytes
    ours = dequantize(raw, qtype)
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(raw, Q[qtype]).reshape(8, 256))
    assert np.abs(ours - w).max() < 0.5  # and it is w, up to the type's rounding


def test_tensor_shapes_are_kept():
    raw = random_blocks("Q6_K", 6, np.random.default_rng(2)).reshape(2, 3, -1)
    assert dequantize(raw, "Q6_K").shape == (2, 3, 512)


def test_a_type_we_do_not_read_is_named():
    with pytest.raises(ConfigError, match="stored as IQ2_XXS, a ggml type lmstack does not read"):
        dequantize(np.zeros((1, 66), np.uint8), "IQ2_XXS")
