"""QLoRA: LoRA on a frozen 4-bit base (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of
Quantized LLMs"), in plain PyTorch.

The base's Linear layers are stored in 4 bits and never trained; each forward dequantizes the
weight to the activations' dtype (fp32, or bf16 under autocast / on a bf16 model) and
multiplies. Gradients flow through the dequantized weight to the layer's *input* (so LoRA
layers below it learn), not to the weight. The backward dequantizes again instead of keeping
the full-precision copy alive between forward and backward (`DequantizedMatmul`): the point
of QLoRA is that only the 4-bit weights stay in memory.

Two 4-bit bases:

- "nf4": NormalFloat4 in blocks of 64 with double-quantized absmax constants, as in the paper
  (nf4.py: 4.127 bits a weight). `NF4Linear`.
- "int4": lmstack's asymmetric group-wise int4 (lmstack/infer/quantize.py, 4 + 64/g bits a
  weight: 5 at g = 64), whose forward runs torch's int4 CPU kernel. `Int4BaseLinear`.

Which layers: as in the paper, every nn.Linear of the base is quantized — the LoRA targets and
all the others — except `QuantConfig.skip` (default the head `lm_head`, as the paper and
Hugging Face keep it, and so a tied head stays tied to the fp32 embedding). Embeddings and
norms stay in their dtype.

    >>> from lmstack.models import GPT, GPTConfig
    >>> from lmstack.posttrain.peft import LoraConfig
    >>> model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=64))
    >>> model = apply_qlora(model, LoraConfig(r=4))
    >>> type(model.layers[0].attn.q_proj).__name__, type(model.layers[0].mlp.up_proj).__name__
    ('QLoraLinear', 'NF4Linear')

An adapter trained on a quantized base is a plain LoRA adapter (save_adapter / load_adapter):
load it onto the fp base and `quantize_base` that, or merge it there.

Run the tests: `pytest tests/posttrain/test_qlora.py lmstack/posttrain/peft/qlora.py --doctest-modules`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.errors import ConfigError
from lmstack.infer.quantize import (
    Int4Linear,
    QuantLinear,
    check_group_size,
    pack_int4,
    unpack_int4,
)
from lmstack.posttrain.peft import nf4
from lmstack.posttrain.peft.lora import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    lora_layers,
    pattern_matches,
)


class DequantizedMatmul(torch.autograd.Function):
    """y = layer(x) for a frozen quantized layer; the backward re-dequantizes W for dL/dx =
    dL/dy · W rather than keeping a full-precision W from the forward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer, ctx.x_dtype = layer, x.dtype
        device = x.device.type
        # Autocast is off in a backward: remember its dtype so dL/dx is a bf16 matmul too.
        ctx.amp_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        return QuantLinear.forward(layer, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        dtype = ctx.amp_dtype or grad.dtype
        w = ctx.layer.dequantize().to(dtype)              # (out, in), dropped after this line
        return (grad.to(dtype) @ w).to(ctx.x_dtype), None  # (..., out) @ (out, in) -> (..., in)


class NF4Linear(QuantLinear):
    """A frozen Linear stored as NF4 with double quantization (nf4.py); dequantizes in forward.

    Buffers: `qweight` uint8 (two 4-bit codes a byte, padded to whole blocks), `absmax_q` int8
    (one per block of `blocksize` weights), `absmax_scale` fp32 (one per 256 blocks) and
    `absmax_mean` fp32 (one); `bias` stays fp32 and frozen."""

    bits = 4

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 blocksize: int = nf4.BLOCKSIZE) -> None:
        # The "reference" path of QuantLinear.forward is ours: dequantize, then F.linear.
        super().__init__(in_features, out_features, bias, reference=True)
        if blocksize < 2 or blocksize % 2:
            raise ConfigError(f"NF4 blocksize must be an even number >= 2, got {blocksize}; the paper uses 64")
        self.blocksize = blocksize
        n_blocks = -(-in_features * out_features // blocksize)
        n_scales = -(-n_blocks // nf4.DQ_BLOCKSIZE)
        self.register_buffer("qweight", torch.zeros(n_blocks * blocksize // 2, dtype=torch.uint8))
        self.register_buffer("absmax_q", torch.zeros(n_blocks, dtype=torch.int8))
        self.register_buffer("absmax_scale", torch.zeros(n_scales))
        self.register_buffer("absmax_mean", torch.zeros(()))

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = nf4.BLOCKSIZE) -> NF4Linear:
        """The NF4 layer standing for `linear`'s weight (and bias)."""
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, blocksize)
        codes, absmax = nf4.quantize_nf4(linear.weight, blocksize)
        m.qweight = pack_int4(codes.view(1, -1)).view(-1)
        m.absmax_q, m.absmax_scale, m.absmax_mean = nf4.double_quantize(absmax)
        if linear.bias is not None:
            m.bias.data = linear.bias.detach().float().clone()
        return m.to(linear.weight.device)

    def dequantize(self) -> torch.Tensor:
        """The fp32 (out, in) weight: level[code] · dequantized absmax, block by block."""
        absmax = nf4.dequantize_absmax(self.absmax_q, self.absmax_scale, self.absmax_mean)
        codes = unpack_int4(self.qweight.view(1, -1)).view(-1)
        w = nf4.dequantize_nf4(codes, absmax, self.in_features * self.out_features, self.blocksize)
        return w.view(self.out_features, self.in_features)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype))

    @classmethod
    def fuse(cls, layers: list[NF4Linear]) -> None:
        """Decoding's q/k/v and gate/up fusion (infer/fuse.py) leaves NF4 layers apart: their
        blocks and double-quantized constants run across rows, so stacking would re-block them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DequantizedMatmul.apply(x, self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nf4 blocksize={self.blocksize}, double_quant=256")


class Int4BaseLinear(Int4Linear):
    """lmstack's group-wise Int4Linear as a trainable model's frozen base: the same storage
    and kernel, and a backward to the input through the dequantized weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DequantizedMatmul.apply(x, self)


class QLoraLinear(LoraLinear):
    """A LoraLinear over a frozen quantized base (NF4Linear or Int4BaseLinear): base(x) +
    scaling · B A dropout(x). It is a LoraLinear by type, so lora_layers, lora_parameters,
    lora_state_dict and save_adapter treat it as any LoRA layer; `weight` is the dequantized
    base (read-only), and merging into 4 bits is refused (it would not be exact)."""

    def __init__(self, base: QuantLinear, lora: LoraLinear) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: there is no float weight to hold
        self.in_features, self.out_features = base.in_features, base.out_features
        self.base = base
        self.lora_A, self.lora_B, self.lora_dropout = lora.lora_A, lora.lora_B, lora.lora_dropout
        self.r, self.alpha, self.dropout_p, self.use_rslora = lora.r, lora.alpha, lora.dropout_p, lora.use_rslora
        self.scaling, self.merged = lora.scaling, False

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, dequantized to fp32 (out, in): a new tensor, not a parameter."""
        return self.base.dequantize()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merge(self) -> None:
        raise ConfigError("a LoRA update cannot be merged exactly into a 4-bit base; save_adapter, "
                          "then load_adapter onto the full-precision base and merge there")

    def unmerge(self) -> None:
        """Nothing to take out: a QLoRA layer is never merged."""

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, dropout={self.dropout_p}, base={type(self.base).__name__}"


@dataclass
class QuantConfig:
    """How QLoRA stores the frozen base: the format, its block/group size, the layers kept fp."""

    method: str = "nf4"                 # "nf4" (the paper's) or "int4" (lmstack's group-wise)
    blocksize: int = nf4.BLOCKSIZE      # nf4: weights per absmax
    group_size: int = 64                # int4: weights per scale and zero point
    skip: tuple[str, ...] = ("lm_head",)  # Linear layers left unquantized (name patterns)

    def __post_init__(self) -> None:
        if isinstance(self.skip, str):
            self.skip = (self.skip,)
        self.skip = tuple(self.skip)
        if self.method not in QUANTIZERS:
            raise ConfigError(f"QLoRA base quantization {self.method!r} is unknown; choose one of "
                              f"{sorted(QUANTIZERS)}")
        if self.blocksize < 2 or self.blocksize % 2:
            raise ConfigError(f"NF4 blocksize must be an even number >= 2, got {self.blocksize}; the paper uses 64")

    def quantize(self, linear: nn.Linear) -> QuantLinear:
        """The frozen quantized layer standing for `linear`."""
        return QUANTIZERS[self.method](linear, self)


# method -> (fp Linear, config) -> its frozen quantized base layer
QUANTIZERS = {
    "nf4": lambda linear, cfg: NF4Linear.from_linear(linear, cfg.blocksize),
    "int4": lambda linear, cfg: Int4BaseLinear.from_linear(linear, cfg.group_size).to(linear.weight.device),
}


def _quantizable(model: nn.Module, cfg: QuantConfig) -> dict[str, nn.Linear]:
    """The layers quantize_base replaces: every nn.Linear (LoRA layers' bases included) but
    the skipped ones and the LoRA A/B matrices; ConfigError for an int4 group that does not fit."""
    inner = {f"{n}.{part}" for n in lora_layers(model) for part in ("lora_A", "lora_B")}
    out = {}
    for name, m in model.named_modules():
        if (isinstance(m, nn.Linear) and not isinstance(m, QLoraLinear) and name not in inner
                and not any(pattern_matches(p, name) for p in cfg.skip)):
            if cfg.method == "int4":
                check_group_size(m.in_features, cfg.group_size, name)
            out[name] = m
    return out


def quantize_base(model: nn.Module, cfg: QuantConfig | None = None) -> nn.Module:
    """Store the frozen base of `model` in 4 bits, in place (returned too): every nn.Linear
    but cfg.skip becomes a frozen quantized layer, and every LoraLinear a QLoraLinear over
    one (its A and B kept). Checked before any change."""
    cfg = cfg if cfg is not None else QuantConfig()
    layers = _quantizable(model, cfg)
    if not layers:
        raise ConfigError(f"quantize_base: no nn.Linear layer to quantize (skip={list(cfg.skip)}); "
                          "the model is already quantized or everything is skipped")
    for name, m in layers.items():
        if isinstance(m, LoraLinear):
            m.unmerge()  # quantize the base weight, not base + B A
        base = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        base.weight, base.bias = m.weight, m.bias  # the same tensors: a LoraLinear's base too
        new = cfg.quantize(base)
        new = QLoraLinear(new, m) if isinstance(m, LoraLinear) else new
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    trained = {id(p) for layer in lora_layers(model).values() for p in (layer.lora_A.weight, layer.lora_B.weight)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)  # the base frozen: embeddings, norms, biases too
    return model


def apply_qlora(model: nn.Module, lora: LoraConfig, quant: QuantConfig | str = "nf4") -> nn.Module:
    """QLoRA in place (returned too): LoRA on `lora.target_modules`, then the whole base but
    `quant.skip` stored in 4 bits and frozen. Only the LoRA A and B matrices train."""
    quant = QuantConfig(method=quant) if isinstance(quant, str) else quant
    _quantizable(model, quant)  # int4 group sizes checked before apply_lora changes anything
    return quantize_base(apply_lora(model, lora), quant)
