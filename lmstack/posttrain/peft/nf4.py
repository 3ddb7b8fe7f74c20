"""4-bit NormalFloat (NF4) with double quantization: QLoRA's storage of a frozen base weight
(Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", sections 3-4).

- **NF4.** Pretrained weights are close to normally distributed, so the 16 levels are quantiles
  of N(0, 1) scaled to [-1, 1]: 8 for the positive half and 7 for the negative half, plus an
  exact zero (so zero padding and zero weights stay zero). A block of 64 weights is divided by
  its absolute maximum (the block's "quantization constant") and each weight becomes the index
  of its nearest level: 4 bits.
- **Double quantization.** One fp32 absmax per 64 weights costs 32/64 = 0.5 bit a weight. The
  absmax values are themselves quantized: their mean is subtracted (they are all positive, so
  the rest is centered on zero) and each block of 256 is stored in 8 bits with one fp32 scale:
  8/64 + 32/(64·256) = 0.127 bit a weight, 4.127 bits in all. The paper stores the second level
  as 8-bit floats; we store symmetric int8 (round-to-nearest, scale = block absmax / 127), whose
  error on a block of similar magnitudes is no larger, at the same 8 bits.

Pure functions on flat tensors; the module that holds them is NF4Linear (qlora.py).

    >>> w = torch.randn(4096)
    >>> codes, absmax = quantize_nf4(w)
    >>> codes.dtype, codes.shape, absmax.shape
    (torch.uint8, torch.Size([4096]), torch.Size([64]))
    >>> err = (dequantize_nf4(codes, absmax, w.numel()) - w).abs()
    >>> bool(err.max() <= absmax.max() * max_gap() / 2)
    True

Run the tests: `pytest tests/posttrain/test_qlora.py lmstack/posttrain/peft/nf4.py --doctest-modules`.
"""

from __future__ import annotations

import torch

BLOCKSIZE = 64        # weights per absmax (the paper's choice for NF4)
DQ_BLOCKSIZE = 256    # absmax constants per second-level scale (double quantization)

# The 16 NF4 levels as the paper's appendix and bitsandbytes list them (float32);
# `normal_float_levels()` derives them, and a test holds the two equal.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def normal_float_levels(bits: int = 4) -> torch.Tensor:
    """The 2^bits NormalFloat levels, ascending in [-1, 1]: N(0, 1) quantiles, an exact 0.

    Quantiles at evenly spaced probabilities from 1/2 up to `offset` (8 of them for the
    positive half, 7 for the negative, for 4 bits), where `offset` halfway between
    1 - 1/(2·15) and 1 - 1/(2·16) keeps the outermost quantile finite; then scaled by the
    largest so that ±1 are levels.

    >>> [round(v, 4) for v in normal_float_levels()[[0, 7, 8, 15]].tolist()]
    [-1.0, 0.0, 0.0796, 1.0]
    """
    n = 2 ** bits
    offset = ((1 - 1 / (2 * (n - 1))) + (1 - 1 / (2 * n))) / 2           # 0.9677 for 4 bits
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, n // 2 + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, n // 2, dtype=torch.float64)[:-1])
    levels = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return (levels / levels.max()).float()


def levels() -> torch.Tensor:
    """NF4_LEVELS as a float32 tensor (16,)."""
    return torch.tensor(NF4_LEVELS, dtype=torch.float32)


def max_gap() -> float:
    """The widest gap between two neighbouring NF4 levels (the outermost one, 1 - 0.7230)."""
    return float(levels().diff().max())


def _blocks(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Flat x zero-padded to whole blocks: (n_blocks, blocksize)."""
    x = x.reshape(-1)
    return torch.nn.functional.pad(x, (0, -x.numel() % blocksize)).view(-1, blocksize)


def quantize_nf4(w: torch.Tensor, blocksize: int = BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax): uint8 level indices 0..15 of the flattened, zero-padded weight
    (n_blocks · blocksize,) and the fp32 absmax of each block (n_blocks,)."""
    blocks = _blocks(w.detach().float(), blocksize)               # (n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)                              # (n_blocks,)
    scaled = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]  # in [-1, 1]
    lv = levels().to(w.device)
    midpoints = (lv[1:] + lv[:-1]) / 2                             # (15,) decision boundaries
    codes = torch.bucketize(scaled, midpoints)                     # nearest level's index
    return codes.to(torch.uint8).reshape(-1), absmax


def dequantize_nf4(codes: torch.Tensor, absmax: torch.Tensor, numel: int,
                   blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """The flat fp32 weight (numel,) that `codes` and `absmax` stand for: level · absmax."""
    values = levels().to(codes.device)[codes.long()].view(-1, blocksize)  # (n_blocks, blocksize)
    return (values * absmax[:, None]).reshape(-1)[:numel]


def double_quantize(absmax: torch.Tensor, blocksize: int = DQ_BLOCKSIZE
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scales, mean): the absmax constants minus their mean, in int8 blocks of `blocksize`
    with one fp32 scale each; `dequantize_absmax` inverts it (error <= scale / 2 each).

    >>> c = torch.rand(1000) + 0.5
    >>> q, scales, mean = double_quantize(c)
    >>> q.dtype, q.shape, scales.shape
    (torch.int8, torch.Size([1000]), torch.Size([4]))
    >>> bool((dequantize_absmax(q, scales, mean) - c).abs().max() <= scales.max() / 2 + 1e-7)
    True
    """
    mean = absmax.float().mean()
    blocks = _blocks(absmax.float() - mean, blocksize)            # (n, blocksize), centered
    scales = blocks.abs().amax(dim=1) / 127                        # (n,)
    q = torch.round(blocks / scales.clamp_min(torch.finfo(torch.float32).tiny)[:, None])
    return q.to(torch.int8).reshape(-1)[:absmax.numel()], scales, mean


def dequantize_absmax(q: torch.Tensor, scales: torch.Tensor, mean: torch.Tensor,
                      blocksize: int = DQ_BLOCKSIZE) -> torch.Tensor:
    """The fp32 absmax constants (n,) of `double_quantize`'s output: q · scale + mean."""
    blocks = _blocks(q.float(), blocksize)                         # (n_scales, blocksize)
    return (blocks * scales[:, None]).reshape(-1)[:q.numel()] + mean


def nf4_bits_per_weight(numel: int, blocksize: int = BLOCKSIZE, dq_blocksize: int = DQ_BLOCKSIZE) -> float:
    """Bits a weight costs stored as NF4 with double quantization, padding included.

    >>> round(nf4_bits_per_weight(64 * 256 * 64), 3)  # the paper's 4.127
    4.127
    """
    n_blocks = -(-numel // blocksize)
    n_scales = -(-n_blocks // dq_blocksize)
    bits = 4 * n_blocks * blocksize + 8 * n_blocks + 32 * n_scales + 32  # + the one fp32 mean
    return bits / numel
