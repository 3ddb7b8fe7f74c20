"""The decode-time form of a loaded model: fused projections and oneDNN matrix-vector products.

A decode step at batch 1 multiplies one vector by each weight matrix. On a small model (SmolLM2:
30 layers 576 wide) that is ~200 small products a token, and two things decide their speed:
how many there are (each costs a fixed few microseconds around the arithmetic), and which
library runs them. `prepare_decode(model)` changes both, in place, without changing the
numbers beyond float rounding:

- **Fused projections.** q_proj, k_proj and v_proj read the same input, so their weights are
  stacked into one `qkv_proj` ((H + 2 KV)·d, C) whose output is split back; likewise SwiGLU's
  gate_proj and up_proj into one `gate_up_proj` (2·hidden, C) — the "fused QKV" of vLLM and
  gpt-fast. Each output row is the same dot product as before. int8/int4 layers fuse too:
  their rows and per-row (or per-group) scales are stacked the same way (quantize.py).
- **oneDNN for float weights.** torch's `F.linear` sends a (1, K) x (K, N) fp32 product to
  MKL's gemv; `torch.ops.mkldnn._linear_pointwise` (oneDNN's inner product, the op torch's
  own compiler emits for CPU linears) reads the weight stored (N, K) ~1.3-1.8x faster on an AMD
  Zen 4 (AVX-512): 25 GB/s against 15-19 over a decode step's matrices, the 49152-row head 3.0
  ms against 5.0 (2 threads, every matrix of a step in turn). `OneDNNLinear` is an
  nn.Linear that runs it for a one-row input when no gradient is wanted (a batch-1 decode
  step) and falls back to `F.linear` otherwise.
  Only fp32: for bf16 weights `F.linear` is as fast (it runs oneDNN already). Without oneDNN
  in the torch build, fp32 weights get `decode_layout` instead: stored (in, out) in memory,
  which MKL's gemv streams faster than (out, in).

The result is for decoding: the fused modules replace the originals, so its state_dict names
differ (save a model before preparing it, never after). `Engine.load` prepares the model it
loads; a model handed to `Engine(...)` is left as it is.

    >>> from lmstack.models import GPT, GPTConfig
    >>> model = GPT(GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=64, mlp="swiglu",
    ...                       position="rope", norm="rmsnorm", bias=False))
    >>> _ = prepare_decode(model)
    >>> attn, mlp = model.layers[0].attn, model.layers[0].mlp
    >>> tuple(attn.qkv_proj.weight.shape), hasattr(attn, "q_proj"), tuple(mlp.gate_up_proj.weight.shape)
    ((128, 64), False, (384, 64))

Tests: `pytest lmstack/infer/fuse.py tests/infer/test_fuse.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.infer.quantize import QuantLinear

# (fused name, the modules it replaces, in output order)
FUSIONS = (("qkv_proj", ("q_proj", "k_proj", "v_proj")), ("gate_up_proj", ("gate_proj", "up_proj")))


def onednn_available() -> bool:
    """Whether this torch build has oneDNN (mkldnn) for CPU linears."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# Only a one-row product (a batch-1 decode step) goes through oneDNN: that is where it is faster,
# and oneDNN keeps memory for each other shape it sees — a server's batched steps and prefills
# grew its resident memory by ~70 MB over 200 requests (tests/serve/test_reliability.py).
DECODE_ROWS = 1


class OneDNNLinear(nn.Linear):
    """An nn.Linear whose inference forward is oneDNN's inner product (same parameters and
    state_dict; `F.linear` whenever autograd may need the graph, which oneDNN's op lacks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.numel() > DECODE_ROWS * x.shape[-1]:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> OneDNNLinear:
        """The same parameter objects (a tied head stays tied), the weight made (out, in)
        contiguous: oneDNN reads that order fastest."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        if not linear.weight.is_contiguous():
            linear.weight.data = linear.weight.data.contiguous()
        new.weight, new.bias = linear.weight, linear.bias
        return new


def decode_layout(model: torch.nn.Module) -> None:
    """Store each fp32 CPU `nn.Linear` weight (out, in) as the transpose of an (in, out)
    contiguous matrix, in place: the same values and shape, another memory order.

    At batch 1 a decode step is one (1, in) x (in, out) product per layer, and MKL's gemv
    streams a weight stored (in, out) faster than one stored (out, in): on SmolLM2's 576-wide
    layers and its 49152-row head, 1.3x and 1.75x (benchmarks/real_model.py, AMD EPYC Zen 4).
    Only fp32: bf16's kernel is the other way round. A tied head keeps its tie (the parameter
    object is unchanged); the embedding lookup reads one strided row. Safetensors cannot
    save a weight stored this way; oneDNN (`OneDNNLinear`) reads (out, in) fastest."""
    for module in model.modules():
        w = getattr(module, "weight", None)
        if (isinstance(module, nn.Linear) and w is not None and w.dtype == torch.float32
                and w.device.type == "cpu" and w.dim() == 2 and w.is_contiguous()):
            w.data = w.data.t().contiguous().t()  # (out, in) view of (in, out) memory


def fuse_linears(layers: list[nn.Module]) -> nn.Module | None:
    """One layer computing `torch.cat([layer(x) for layer in layers], -1)`, or None when they
    cannot be stacked (different kinds, input widths, dtypes or quantization settings). A
    layer kind from above this package stacks itself with a `fuse(layers)` classmethod
    (posttrain/peft/multi_lora.py's MultiLoraLinear)."""
    first = layers[0]
    if any(type(m) is not type(first) or m.in_features != first.in_features for m in layers):
        return None
    if hasattr(type(first), "fuse"):
        return type(first).fuse(layers)
    if isinstance(first, QuantLinear):
        return fuse_quantized(layers)
    if type(first) is not nn.Linear or len({(m.weight.dtype, m.weight.device) for m in layers}) != 1:
        return None
    if len({m.bias is None for m in layers}) != 1:
        return None
    out = sum(m.out_features for m in layers)
    fused = nn.Linear(first.in_features, out, bias=first.bias is not None, device="meta")
    with torch.no_grad():
        fused.weight = nn.Parameter(torch.cat([m.weight for m in layers]), requires_grad=False)
        if first.bias is not None:
            fused.bias = nn.Parameter(torch.cat([m.bias for m in layers]), requires_grad=False)
    return fused


def fuse_projections(model: nn.Module) -> int:
    """Replace each module's q/k/v (and gate/up) projections by one fused layer, in place:
    the module must declare the fused slot (`qkv_proj = None`, `gate_up_proj = None`, as
    attention.py and mlp.py do) and run it when set. Returns how many were fused."""
    n = 0
    for module in list(model.modules()):
        for fused_name, parts in FUSIONS:
            if getattr(module, fused_name, False) is not None or not all(hasattr(module, p) for p in parts):
                continue  # no slot for a fused layer, already fused, or not this kind of module
            fused = fuse_linears([getattr(module, p) for p in parts])
            if fused is None:
                continue
            setattr(module, fused_name, fused)
            for p in parts:
                delattr(module, p)
            n += 1
    return n


def use_onednn(model: nn.Module) -> int:
    """Swap every fp32 CPU nn.Linear for a OneDNNLinear on the same parameters, in place.
    Returns how many were swapped."""
    n = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if (type(child) is nn.Linear and child.weight.device.type == "cpu"
                    and child.weight.dtype == torch.float32):
                setattr(module, name, OneDNNLinear.from_linear(child))
                n += 1
    return n


def prepare_decode(model: nn.Module, fuse: bool = True, onednn: bool = True) -> nn.Module:
    """The decode-time form of `model`, in place (returned too): fused projections (`fuse`),
    then fp32 linears through oneDNN (`onednn`, where the build has it) or else laid out for
    MKL (`decode_layout`)."""
    if fuse:
        fuse_projections(model)
    if onednn and onednn_available():
        use_onednn(model)
    else:
        decode_layout(model)
    return model


def fuse_quantized(layers: list[QuantLinear]) -> QuantLinear | None:
    """One layer whose output is `layers`' outputs concatenated: their rows, scales (and
    zeros, bias) stacked — each row keeps its own scales, so the numbers are the same. None
    when they differ in kind, input width, group size, bias or settings (`fuse_linears`)."""
    first = layers[0]
    key = [(type(m), m.in_features, getattr(m, "group_size", None), m.bias is None, m.reference,
            m.act_dtype, m.qweight.device) for m in layers]
    if len(set(key)) != 1:
        return None
    kw = {"reference": first.reference, "act_dtype": first.act_dtype}
    fused = type(first)(first.in_features, sum(m.out_features for m in layers), first.bias is not None,
                        group_size=first.group_size, **kw).to(first.qweight.device)
    for name, _ in fused.named_buffers(recurse=False):
        setattr(fused, name, torch.cat([getattr(m, name) for m in layers]))
    if first.bias is not None:
        fused.bias.data = torch.cat([m.bias.data for m in layers])
    return fused
