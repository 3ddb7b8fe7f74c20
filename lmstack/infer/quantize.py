"""Weight-only quantization: int8 per output channel, int4 in groups, and bf16 inference.

A decode step at batch 1 reads every weight once and does little arithmetic with each, so its
speed is set by how many bytes the weights take. Storing them in 8 or 4 bits instead of 32
reads 4x or 8x fewer bytes; activations stay in floating point ("weight-only" quantization).

- **int8, symmetric, per output channel** (the absmax scheme of LLM.int8(), Dettmers et al.
  2022, without its outlier decomposition): row n of W (out, in) gets one scale
  s_n = max|W[n]| / 127 and q = round(W / s_n) in [-127, 127]; W ~ s_n * q. The rounding
  error of each weight is at most s_n / 2.
- **int4, asymmetric, group-wise** (round-to-nearest in groups along the input dimension, the
  baseline that GPTQ, Frantar et al. 2022, and AWQ improve on; the layout of gpt-fast and
  torchao's int4 weight-only): each run of `group_size` (32/64/128/256) weights of a row gets a
  scale s = (max - min) / 15 and a zero point z = min, q = round((W - z) / s) in [0, 15];
  W ~ q * s + z. The zero point is kept as a float (the group's minimum, so both ends of the
  range are exact) rather than GPTQ's integer; error at most s / 2. Smaller groups: smaller
  error, more scales to store (2 floats per group: +2 bits per weight at g32, +0.5 at g128).

The readable reference is `quantize_*` / `dequantize_*` below (doctested). The fast path runs
the CPU kernels torch ships, `torch._weight_int8pack_mm(x, q, scales)` and
`torch._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)`, which
dequantize inside the matmul. Their requirements, found by experiment on torch 2.13:

- int8: q (N, K) int8, scales (N,) in the dtype of x; x 2-D (M, K), fp32, bf16 or fp16.
- int4: `torch._convert_weight_to_int4pack_for_cpu(q_int32 (N, K) in 0..15, 1)` -> (N, K/2)
  uint8 in the kernel's own blocked layout (not row-separable: rows are packed in tiles);
  N must be a multiple of 16 (we pad rows with zeros and slice the output);
  group size 32, 64, 128 or 256; scales_and_zeros (K/group, N, 2) in x's dtype, holding
  (s, z + 8 s): the kernel computes (q - 8) * s + zero.
- On an AVX2-only CPU (no AVX-512) both kernels are ~7-10x slower with fp32 activations than
  with bf16 ones (a scalar fallback), so the fast path casts activations to `act_dtype`
  (default bf16) for the matmul and casts the result back. `act_dtype=torch.float32` matches
  the reference path to float rounding; bf16 adds bf16 rounding of the activations.

On disk a quantized model directory is an ordinary one (models/directory.py) whose config.json
has a `"quantization": {"bits", "group_size", "method", "skip"}` entry and whose
model.safetensors holds, for each quantized layer, `qweight` (int8 (N, K), or for int4 uint8
(N, K/2): two 4-bit values per byte, column 2j in the low nibble, 2j+1 in the high one — a
portable layout; the kernel's is made when the layer first runs), `scales`, (`zeros`) and
`bias`. `load_model` and `Engine.load` rebuild the quantized modules, so
`lmstack generate --model runs/q4` works unchanged.

**The tied head.** With `tie_embeddings` the head `lm_head` and the token table `wte` are one
matrix. The head is an nn.Linear read in full every step (a third of GPT-2 small's weights), so
it is quantized by default; the embedding lookup reads one row per token and keeps the fp32
table. The tie is therefore broken: the directory stores wte in fp32 and the head quantized.
`skip=("lm_head",)` keeps the head fp32 and tied instead (smaller file for a small model whose
vocabulary table dominates, slower decode) — docs/quantization.md has both measured.

bf16 inference needs no module: `model.to(torch.bfloat16)` (or `Engine.load(dir,
dtype="bf16")`) runs the GPT and its KV cache in bf16; the decoder takes `.float()` logits.

    lmstack quantize --model runs/quickstart --out runs/q8 --bits 8
    lmstack quantize --model runs/quickstart --out runs/q4 --bits 4 --group-size 64
    lmstack generate --model runs/q4 --prompt "def "

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    >>> _ = quantize_model(model, bits=4, group_size=32)
    >>> [type(m).__name__ for m in model]
    ['Int4Linear', 'ReLU', 'Int4Linear']
    >>> quantize_model(nn.Linear(48, 16), bits=4, group_size=32)
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: group_size 32 does not divide the input width 48 of layer '' (nn.Linear(48, 16)); choose a group size that divides every layer's input width, or skip the layer

Tests: `pytest lmstack/infer/quantize.py tests/infer/test_quantize.py`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.errors import ConfigError
from lmstack.models.directory import CONFIG, ModelFormat, load_weights, read_config
from lmstack.models.registry import build_model

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 CPU kernel accepts
METHOD = "rtn"  # round-to-nearest (no calibration data)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- the reference: pure functions ------------------------------------------------------------

def quantize_int8(w: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: (q int8 (N, K), scales float32 (N,)), W ~ q * s[:, None];
    with `group_size`, one scale per run of that many weights of a row (scales (N, K/g)): the
    layout of GGUF's Q8_0 (g = 32).

    >>> w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -0.01]])
    >>> q, s = quantize_int8(w)
    >>> q
    tensor([[  64, -127,   32],
            [ 127,    0,   -1]], dtype=torch.int8)
    >>> s
    tensor([0.0079, 0.0157])
    >>> bool(((dequantize_int8(q, s) - w).abs() <= s[:, None] / 2 + 1e-7).all())  # error <= s/2
    True
    >>> q, s = quantize_int8(torch.tensor([[1.0, -2.0, 0.5, 0.25]]), group_size=2); s * 127
    tensor([[2.0000, 0.5000]])
    """
    w = w.detach().float()
    N, K = w.shape
    g = w.reshape(N, -1, group_size) if group_size else w.reshape(N, 1, K)
    scales = (g.abs().amax(dim=-1) / 127).clamp(min=1e-12)  # an all-zero row: any scale works
    q = torch.round(g / scales[..., None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(N, K), scales if group_size else scales[:, 0]


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 (N, K) weights back from int8 `q` (N, K) and per-row scales (N,) or per-group
    scales (N, K/g)."""
    N, K = q.shape
    s = scales.float().reshape(N, -1, 1)  # (N, groups, 1); one group spans the row
    return (q.float().reshape(N, s.size(1), -1) * s).reshape(N, K)


def check_group_size(in_features: int, group_size: int, name: str = "") -> None:
    """Raise ConfigError unless `group_size` is one the kernel takes and divides the width.

    >>> check_group_size(96, 64, "mlp.up_proj")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: group_size 64 does not divide the input width 96 of layer 'mlp.up_proj'; choose a group size that divides every layer's input width, or skip the layer
    """
    if group_size not in GROUP_SIZES:
        raise ConfigError(f"group_size {group_size} is not supported: use one of {list(GROUP_SIZES)} "
                          "(what torch's int4 CPU kernel accepts)")
    if in_features % group_size:
        raise ConfigError(f"group_size {group_size} does not divide the input width {in_features} of "
                          f"layer {name!r}; choose a group size that divides every layer's input "
                          "width, or skip the layer")


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 in groups of `group_size` along each row: (q uint8 (N, K) in 0..15,
    scales (N, K/g), zeros (N, K/g)) with W ~ q * s + z per group (z = the group's minimum).

    >>> w = torch.linspace(-1, 2, 64).reshape(1, 64)
    >>> q, s, z = quantize_int4(w, 32)
    >>> q[0, :8].tolist(), q[0, 32:36].tolist(), s.shape, z.tolist()
    ([0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1], torch.Size([1, 2]), [[-1.0, 0.5238094925880432]])
    >>> bool(((dequantize_int4(q, s, z) - w).abs() <= s.repeat_interleave(32, 1) / 2 + 1e-6).all())
    True
    >>> quantize_int4(torch.zeros(2, 48), 32)
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: group_size 32 does not divide the input width 48 of layer ''; choose a group size that divides every layer's input width, or skip the layer
    """
    N, K = w.shape
    check_group_size(K, group_size)
    g = w.detach().float().reshape(N, K // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scales = ((hi - lo) / 15).clamp(min=1e-12)  # a constant group: q = 0, W = z exactly
    q = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(N, K), scales, lo


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """float32 (N, K) weights back from `q` (N, K) in 0..15 and per-group scales/zeros (N, K/g)."""
    N, K = q.shape
    g = K // scales.size(1)
    w = q.float().reshape(N, -1, g) * scales.float()[..., None] + zeros.float()[..., None]
    return w.reshape(N, K)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit values per byte: column 2j in the low nibble, 2j+1 in the high one (our file
    layout, independent of the kernel's).

    >>> p = pack_int4(torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)); p.tolist()
    [[33, 15]]
    >>> unpack_int4(p).tolist()
    [[1, 2, 15, 0]]
    """
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The (N, K) uint8 values 0..15 of `pack_int4`'s (N, K/2) bytes."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.size(0), -1)


# ---- modules --------------------------------------------------------------------------------

class QuantLinear(nn.Module, abc.ABC):
    """A Linear whose weight is stored quantized; subclasses define the format and the kernel.

    `reference=True` runs the readable path: dequantize the whole weight, then F.linear (slow,
    exact in fp32). Otherwise the torch kernel runs on activations cast to `act_dtype`."""

    bits = 0

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 reference: bool = False, act_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.reference = reference
        self.act_dtype = act_dtype
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @abc.abstractmethod
    def dequantize(self) -> torch.Tensor:
        """The float32 (out, in) weight this layer stands for."""

    @abc.abstractmethod
    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """(M, in) activations in act_dtype -> (M, out) by the fast kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        y = self.kernel(x.reshape(-1, self.in_features).to(self.act_dtype))
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, reference={self.reference}, act_dtype={self.act_dtype}")


class Int8Linear(QuantLinear):
    """int8 weights (N, K) with one fp32 scale per output channel, or per group of
    `group_size` along the input (GGUF's Q8_0: 32); `torch._weight_int8pack_mm`, whose
    scales are per row: a grouped layer runs it once per group (a (N, g) slice of the weight,
    scaled by that group's column of scales) and sums the results."""

    bits = 8

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 group_size: int | None = None, **kw) -> None:
        if group_size is not None and in_features % group_size:
            raise ConfigError(f"group_size {group_size} does not divide the input width {in_features}")
        super().__init__(in_features, out_features, bias, **kw)
        self.group_size = group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        groups = () if group_size is None else (in_features // group_size,)
        self.register_buffer("scales", torch.ones(out_features, *groups))
        self._packed: tuple[torch.dtype, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None, **kw) -> Int8Linear:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, **kw)
        m.qweight, m.scales = quantize_int8(linear.weight, group_size)
        if linear.bias is not None:
            m.bias.data = linear.bias.detach().float().clone()
        return m

    def dequantize(self) -> torch.Tensor:
        return dequantize_int8(self.qweight, self.scales)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None

    def _kernel_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight as the kernel reads it ((N, K), or grouped (K/g, N, g), each group's
        slice contiguous) and the scales in `dtype` ((N,), or (K/g, N)); made once per dtype."""
        if self._packed is None or self._packed[0] != dtype:
            q, s = self.qweight, self.scales
            if self.group_size is not None:
                q = q.reshape(self.out_features, -1, self.group_size).transpose(0, 1).contiguous()
                s = s.t()
            self._packed = (dtype, q, s.to(dtype).contiguous())
        return self._packed[1], self._packed[2]

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        q, s = self._kernel_weights(x.dtype)
        if self.group_size is None:
            return torch._weight_int8pack_mm(x, q, s)
        g = self.group_size
        y = torch._weight_int8pack_mm(x[:, :g], q[0], s[0]).float()  # sum the groups in fp32
        for i in range(1, q.size(0)):
            y += torch._weight_int8pack_mm(x[:, i * g:(i + 1) * g], q[i], s[i])
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.group_size is None else f", group_size={self.group_size}")


class Int4Linear(QuantLinear):
    """int4 weights in groups along the input, with per-group scales and zero points;
    `torch._weight_int4pack_mm_for_cpu`. The kernel's packed copy is made on first use."""

    bits = 4

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 64,
                 **kw) -> None:
        check_group_size(in_features, group_size)
        super().__init__(in_features, out_features, bias, **kw)
        self.group_size = group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups))
        self.register_buffer("zeros", torch.zeros(out_features, groups))
        self._packed: tuple[torch.dtype, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 64, **kw) -> Int4Linear:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, **kw)
        q, m.scales, m.zeros = quantize_int4(linear.weight, group_size)
        m.qweight = pack_int4(q)
        if linear.bias is not None:
            m.bias.data = linear.bias.detach().float().clone()
        return m

    def dequantize(self) -> torch.Tensor:
        return dequantize_int4(unpack_int4(self.qweight), self.scales, self.zeros)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None  # new weights: repack on next use

    def _kernel_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel's packed weight and (K/g, N_pad, 2) scales-and-zeros, rows padded to 16."""
        if self._packed is None or self._packed[0] != dtype:
            q = unpack_int4(self.qweight).to(torch.int32)
            pad = -self.out_features % 16
            scales, zeros = self.scales.float(), self.zeros.float()
            if pad:
                q = F.pad(q, (0, 0, 0, pad))
                scales, zeros = F.pad(scales, (0, 0, 0, pad)), F.pad(zeros, (0, 0, 0, pad))
            packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
            # The kernel computes (q - 8) * s + zero, ours q * s + z: zero = z + 8 s.
            sz = torch.stack([scales, zeros + 8 * scales], dim=-1).transpose(0, 1).contiguous()
            self._packed = (dtype, packed, sz.to(dtype))
        return self._packed[1], self._packed[2]

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        packed, sz = self._kernel_weights(x.dtype)
        y = torch._weight_int4pack_mm_for_cpu(x, packed, self.group_size, sz)
        return y[:, :self.out_features]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


# ---- whole models ---------------------------------------------------------------------------

def _skipped(name: str, skip: Iterable[str]) -> bool:
    """A layer is skipped if its name, or its last part, is listed (e.g. 'lm_head')."""
    return any(name == s or name.endswith("." + s) for s in skip)


def check_skip(model: nn.Module, skip: tuple[str, ...]) -> None:
    """Raise ConfigError for a skip name that matches no Linear layer (a typo skips nothing)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    unknown = [s for s in skip if not any(_skipped(name, (s,)) for name in linears)]
    if unknown and linears:
        last_parts = sorted({name.rpartition(".")[2] for name in linears})
        raise ConfigError(f"skip (--skip) {unknown} matches no Linear layer of the model; give full "
                          f"names (e.g. {linears[-1]!r}) or last parts, which here are {last_parts}")


def check_quantization(bits: int, group_size: int | None) -> None:
    """Raise ConfigError for bits outside {4, 8} or an int4 group size the kernel does not take."""
    if bits not in BITS:
        raise ConfigError(f"bits {bits} is not supported: use 8 (int8 per channel) or 4 (int4 in groups)")
    if bits == 4 and group_size not in GROUP_SIZES:
        raise ConfigError(f"group_size {group_size} is not supported: use one of {list(GROUP_SIZES)} "
                          "(what torch's int4 CPU kernel accepts)")


def quantize_model(model: nn.Module, bits: int, group_size: int = 64, skip: Iterable[str] = (),
                   reference: bool = False, act_dtype: torch.dtype = torch.bfloat16,
                   empty: bool = False) -> nn.Module:
    """Replace every nn.Linear of `model` (in place; returned too) by an Int8Linear or
    Int4Linear, except those named in `skip` (full names or their last part, e.g. "lm_head").

    Every layer is checked before any is replaced, so bad settings leave the model untouched.
    `reference=True`: every layer runs the readable path (dequantize, then F.linear in fp32): the
    same numbers on every CPU, whatever its int4/int8 kernels do. Otherwise the kernels run on
    activations cast to `act_dtype` (each layer's `reference` / `act_dtype` can be set later).
    `empty=True` builds the modules without quantizing (their buffers are about to be loaded).
    Records `model.quantization` = {"bits", "group_size", "method", "skip"} (for config.json)."""
    check_quantization(bits, group_size)
    skip = tuple(skip)
    check_skip(model, skip)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not _skipped(name, skip)]
    if bits == 4:
        for name, m in targets:
            try:
                check_group_size(m.in_features, group_size, name)
            except ConfigError as e:
                raise ConfigError(str(e).replace(f"layer {name!r}",
                                  f"layer {name!r} (nn.Linear({m.in_features}, {m.out_features}))")) from None
    kw = dict(reference=reference, act_dtype=act_dtype)
    if bits == 4:
        kw["group_size"] = group_size
    cls = Int8Linear if bits == 8 else Int4Linear
    for name, m in targets:
        if empty:
            new = cls(m.in_features, m.out_features, m.bias is not None, **kw)
        else:
            new = cls.from_linear(m, **kw)
        _set_module(model, name, new.to(m.weight.device))
    model.quantization = {"bits": bits, "group_size": group_size if bits == 4 else None,
                          "method": METHOD, "skip": list(skip)}
    return model


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise ConfigError("quantize_model needs a model that contains nn.Linear layers, "
                          "not a single nn.Linear: use Int8Linear.from_linear / Int4Linear.from_linear")
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def prepare_quantized(model: nn.Module, quantization: dict) -> nn.Module:
    """Give a freshly built model the empty quantized modules a directory's config.json
    describes, ready for `load_state_dict` (used by FORMAT, at the bottom)."""
    if not isinstance(quantization, dict) or "bits" not in quantization:
        raise ConfigError(f"config.json's 'quantization' entry {quantization!r} is not "
                          "{'bits': 4|8, 'group_size': N, 'method': 'rtn'}; the file is corrupt")
    method = quantization.get("method", METHOD)
    if method != METHOD:
        raise ConfigError(f"quantization method {method!r} is unknown; this lmstack reads {METHOD!r}")
    quantize_model(model, int(quantization["bits"]), quantization.get("group_size") or 64,
                   skip=quantization.get("skip", ()), empty=True)
    if "head" in quantization:
        _empty_int8_head(model, quantization["head"])
    return model


def _empty_int8_head(model: nn.Module, head: dict) -> None:
    """The group-wise int8 head of `quantization["head"]` = {"bits": 8, "group_size": g} (a
    GGUF file's Q8_0 head, interop/gguf_model.py), empty, in place of `model.lm_head`."""
    lm_head = getattr(model, "lm_head", None)
    g = head.get("group_size") if isinstance(head, dict) else None
    if not (isinstance(head, dict) and head.get("bits") == 8 and isinstance(g, int) and g > 0
            and isinstance(lm_head, nn.Linear) and lm_head.in_features % g == 0):
        raise ConfigError(f"config.json's quantization head entry {head!r} is not {{'bits': 8, "
                          "'group_size': N}} for this model's lm_head; the file is corrupt")
    model.lm_head = Int8Linear(lm_head.in_features, lm_head.out_features, bias=False,
                               group_size=g).to(lm_head.weight.device)
    model.quantization["head"] = dict(head)


def model_bytes(model: nn.Module) -> int:
    """Bytes of the tensors a saved model holds (shared tensors once; runtime-only copies
    such as the int4 kernel packing excluded): what model.safetensors stores, minus headers."""
    seen, total = set(), 0
    for t in list(model.parameters()) + [b for _, b in model.named_buffers()]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every Int8Linear / Int4Linear of `model` (in place; returned too) by the
    nn.Linear holding exactly the float32 weight it stands for, and forget `model.quantization`."""
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]:
        w = m.dequantize()
        linear = nn.Linear(m.in_features, m.out_features, m.bias is not None, device=w.device)
        with torch.no_grad():
            linear.weight.copy_(w)
            if m.bias is not None:
                linear.bias.copy_(m.bias)
        _set_module(model, name, linear.requires_grad_(False))
    head, wte = getattr(model, "lm_head", None), getattr(model, "wte", None)
    if (getattr(getattr(model, "config", None), "tie_embeddings", False) and head is not None
            and wte is not None and torch.equal(head.weight, wte.weight)):
        head.weight = wte.weight  # a GGUF Q8_0 head stood apart from its table: tied again
    if hasattr(model, "quantization"):
        del model.quantization
    return model


# ---- the model-directory format ---------------------------------------------------------------
# Registered from here (pyproject.toml's lmstack.model_formats entry points), so that
# models/directory.py's load_model opens a quantized directory without importing this layer.


def _is_quantized(path: Path) -> bool:
    return (path / CONFIG).is_file() and "quantization" in read_config(path)


def _load_quantized(path: Path, device: str | torch.device = "cpu") -> nn.Module:
    config = read_config(path)
    quantization = config.pop("quantization")
    # swap in the empty int8/int4 layers the weights file holds, then load it as usual
    model = prepare_quantized(build_model(config), quantization)
    return load_weights(model, path, device)


FORMAT = ModelFormat("quantized", detect=_is_quantized, load=_load_quantized)
