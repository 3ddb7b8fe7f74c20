"""Serving LoRA adapters: several over one base, each row of a batch with its own (S-LoRA, Sheng
et al. 2023; Punica, Chen et al. 2023), or one merged into the base.

`attach_adapters(model, {"name": DIR, ...})` loads each adapter with `load_adapter` (so one made
for another base is refused, naming it), takes its A and B off the model again, and puts a
`MultiLoraLinear` on every layer some adapter adapts. That layer holds every adapter's A and B
stacked, slot 0 all zeros (the base):

    y = W x + b + B[v] (A[v] x)        for each row, v = the row's variant (lmstack/infer/variants.py)

with alpha / r folded into B[v]. An adapter of a smaller rank, or one that leaves the layer
alone, is padded with zeros, which add exactly nothing. A batch of mixed rows gathers each
row's A and B and runs two batched matmuls (Punica's BGMV: batched gather matrix-vector); a
batch whose rows agree runs two plain ones; a base-only batch runs the base alone. Decoding's
fusion (infer/fuse.py) stacks q/k/v and gate/up `MultiLoraLinear`s too (`fuse`: the A's side by
side along the rank, the B's block-diagonal), so every member of such a group is wrapped, a
member no adapter touches with a rank-0 update. The model carries `row_variants` (the
adapters' names), which the scheduler and the prefix cache read: the engine knows each row's
adapter as a number, nothing of LoRA.

`inference_adapter(DIR)` is `--lora DIR` of generate, chat and eval, for every PEFT type
(registry.py's `load_peft`): a LoRA adapter merged into the base weights (`merge_adapter`), so
it decodes at the base's speed, fused as the base is; a prompt-tuning or Houlsby adapter loaded
as it trained (they do not merge); a QLoRA adapter (its train_config.json says peft.method
"qlora") over the base quantized as it trained (nf4 or int4, `quantize_base`). A quantized base
(a GGUF file's Q4_1, `lmstack quantize`) is dequantized first, here and in `attach_adapters`:
`lmstack sft` trains on those floats (sft_run.load_base), so that is what the adapter learned.

    model = attach_adapters(load_model("runs/base"), {"sql": "runs/sql-lora", "poem": "runs/poem"})
    prepare_decode(model); engine = Engine(model, tokenizer)   # rows pick 0 (base), 1 or 2

Tests: `pytest tests/posttrain/test_multi_lora.py`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from lmstack.errors import ConfigError
from lmstack.infer.fuse import FUSIONS, fuse_linears
from lmstack.infer.quantize import QuantLinear, dequantize_model
from lmstack.infer.variants import RowVariants, row_variants
from lmstack.interop.hf import read_json
from lmstack.posttrain.peft.adapter import ADAPTER_CONFIG, load_adapter
from lmstack.posttrain.peft.lora import lora_layers, unload_lora
from lmstack.posttrain.peft.qlora import QuantConfig
from lmstack.posttrain.peft.registry import load_peft

Update = tuple[torch.Tensor, torch.Tensor]  # (A (r, in), scaling · B (out, r)) of one layer


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def float_base(model: nn.Module, note: Callable[[str], None] = _stderr) -> nn.Module:
    """`model` with its int8/int4 layers (a GGUF file's Q4_1, `lmstack quantize`) replaced by
    the float32 weights they stand for, which is what `lmstack sft` trains adapters on; a float
    model is returned as it is. Says so through `note` when it dequantizes."""
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        note("adapter: dequantizing the base's int8/int4 layers to float32 (adapters are trained "
             "on those floats); it runs at float speed and memory")
        dequantize_model(model)
    return model


def trained_quant(directory: str | os.PathLike) -> QuantConfig | None:
    """The 4-bit base a QLoRA adapter trained over (the train_config.json `lmstack sft` writes
    beside it: peft.method "qlora", peft.quant nf4 or int4); None for any other adapter."""
    path = Path(directory) / "train_config.json"
    peft = read_json(path).get("peft") if path.is_file() else None
    if not isinstance(peft, dict) or peft.get("method") != "qlora":
        return None
    return QuantConfig(method=peft.get("quant", "nf4"))


def peft_type(directory: str | os.PathLike) -> str | None:
    """The adapter_config.json's peft_type of an adapter directory (None if it has none)."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise ConfigError(f"{directory} is not an adapter directory (no {ADAPTER_CONFIG}); give the "
                          "--out directory of `lmstack sft` with a PEFT method, or a PEFT adapter")
    return read_json(path).get("peft_type")



class MultiLoraLinear(nn.Module):
    """A frozen linear layer plus one low-rank update per variant, chosen per row."""

    def __init__(self, base: nn.Module, lora_A: torch.Tensor, lora_B: torch.Tensor,
                 variants: RowVariants) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.register_buffer("lora_A", lora_A)   # (N + 1, r, in), slot 0 zeros
        self.register_buffer("lora_B", lora_B)   # (N + 1, out, r), alpha / r folded in
        self.adapted = frozenset(v for v in range(1, lora_A.size(0)) if lora_B[v].any())
        self.variants = variants                  # shared by every layer of the model
        self._gathered: tuple = (None, None, None)  # (key, A^T, B^T) of the last mixed batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base's output plus each row's own update (x: (B, T, in))."""
        y = self.base(x)                                          # (B, T, out)
        ids, same = self.variants.ids, self.variants.same
        if ids is None or (same is not None and same not in self.adapted):
            return y                                              # no row's adapter touches this layer
        if same is not None:
            a, b = self.lora_A[same], self.lora_B[same]           # (r, in), (out, r)
            return y + (x @ a.T) @ b.T
        if x.dim() != 3 or x.size(0) != ids.numel():
            raise ConfigError(f"{ids.numel()} row variants for an input of shape {tuple(x.shape)}")
        a_t, b_t = self.gathered(ids)                             # (B, in, r), (B, r, out)
        return y + torch.bmm(torch.bmm(x, a_t), b_t)

    def gathered(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's A^T and B^T, gathered once per batch composition: decode steps repeat the
        rows of the step before, and the gather costs more than the two matmuls."""
        key = (self.variants.rows, self.lora_A.data_ptr())  # a new pointer after .to(dtype)
        if self._gathered[0] != key:
            self._gathered = (key, self.lora_A.index_select(0, ids).transpose(1, 2).contiguous(),
                              self.lora_B.index_select(0, ids).transpose(1, 2).contiguous())
        return self._gathered[1], self._gathered[2]

    @classmethod
    def fuse(cls, layers: list[MultiLoraLinear]) -> MultiLoraLinear | None:
        """One layer for q/k/v (or gate/up), as infer/fuse.py stacks plain ones: the bases
        fused, the A's stacked along the rank, the B's block-diagonal (each output block reads
        only its own layer's ranks, so every row's output is the same sum as before)."""
        base = fuse_linears([m.base for m in layers])
        if base is None or len({id(m.variants) for m in layers}) != 1:
            return None
        A = torch.cat([m.lora_A for m in layers], dim=1)             # (N + 1, sum r, in)
        B = A.new_zeros(A.size(0), sum(m.out_features for m in layers), A.size(1))  # (N + 1, sum out, sum r)
        out = rank = 0
        for m in layers:
            o, r = m.lora_B.shape[1:]
            B[:, out:out + o, rank:rank + r] = m.lora_B
            out, rank = out + o, rank + r
        return cls(base, A, B, layers[0].variants)

    def extra_repr(self) -> str:
        n, r = self.lora_A.shape[:2]
        return f"in={self.in_features}, out={self.out_features}, adapters={n - 1}, r={r}"


def take_adapter(model: nn.Module, name: str, directory: str | os.PathLike) -> dict[str, Update]:
    """One adapter's updates by layer name: loaded onto `model` (load_adapter's checks), then
    taken off again, the base's own layers (same parameters) put back unchanged."""
    try:
        load_adapter(model, directory)
    except ConfigError as e:
        raise ConfigError(f"adapter {name!r} ({directory}): {e}") from None
    updates = {}
    for layer_name, layer in lora_layers(model).items():
        updates[layer_name] = (layer.lora_A.weight.detach().clone(),
                               (layer.lora_B.weight * layer.scaling).detach().clone())
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight, plain.bias = layer.weight, layer.bias
        parent, _, child = layer_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    return updates


def stack_updates(layer: nn.Module, updates: list[Update | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every variant's update of one layer as (N + 1, r, in) and (N + 1, out, r), r the largest
    rank (0 if none adapts it), slot 0 and the variants that leave the layer alone all zeros."""
    r = max((u[0].size(0) for u in updates if u is not None), default=0)
    kw = {"dtype": layer.weight.dtype, "device": layer.weight.device}
    A = torch.zeros(len(updates) + 1, r, layer.in_features, **kw)
    B = torch.zeros(len(updates) + 1, layer.out_features, r, **kw)
    for v, update in enumerate(updates, start=1):
        if update is not None:
            a, b = update
            A[v, :a.size(0)] = a          # the padded rows of A meet the padded columns of B: 0
            B[v, :, :b.size(1)] = b
    return A, B


def with_siblings(model: nn.Module, names: set[str]) -> set[str]:
    """`names` and the layers decoding fuses with them (q_proj with k_proj and v_proj, gate_proj
    with up_proj: infer/fuse.py's FUSIONS), so that an adapted group still fuses; a sibling no
    adapter touches gets a rank-0 update, which adds nothing."""
    out = set(names)
    for name in names:
        parent, _, child = name.rpartition(".")
        module = model.get_submodule(parent) if parent else model
        for _, group in FUSIONS:
            if child in group:
                prefix = parent + "." if parent else ""
                out |= {prefix + g for g in group if isinstance(getattr(module, g, None), nn.Linear)}
    return out


def check_per_row(name: str, directory: str | os.PathLike) -> None:
    """ConfigError, naming the fix, for an adapter that per-row serving cannot add: one not LoRA
    (a soft prompt or bottleneck layers change more than a layer's output), or a QLoRA one (it
    learned against a 4-bit base, and the rows share one float base)."""
    kind = peft_type(directory)
    alone = (f"serve it alone as the model, applied as `generate --lora` applies it: "
             f"lmstack serve --model BASE --adapter {directory}")
    if kind != "LORA":
        raise ConfigError(f"--lora {name}={directory} is a {kind} adapter; per-row serving takes LoRA "
                          f"adapters only; {alone}")
    quant = trained_quant(directory)
    if quant is not None:
        raise ConfigError(f"--lora {name}={directory} is a QLoRA adapter, trained over a {quant.method} "
                          f"base; per-row serving shares one float base; {alone}")


def attach_adapters(model: nn.Module, adapters: Mapping[str, str | os.PathLike],
                    note: Callable[[str], None] = _stderr) -> nn.Module:
    """Serve `adapters` (name -> LoRA adapter directory) over `model`, in place: variant i + 1
    is the i-th adapter, 0 the base (see the module docstring); a quantized base is dequantized
    first (`float_base`). ConfigError, naming the adapter, for one that does not fit this base
    or is not a plain LoRA adapter (`check_per_row`)."""
    if not adapters:
        raise ConfigError("attach_adapters: no adapters given; pass {name: adapter directory}")
    if row_variants(model) is not None or lora_layers(model):
        raise ConfigError("attach_adapters: the model already has adapters; start from a fresh base")
    for name, directory in adapters.items():
        check_per_row(name, directory)
    float_base(model, note)
    names = tuple(adapters)
    taken = [take_adapter(model, name, adapters[name]) for name in names]
    variants = RowVariants(names)
    for layer_name in sorted(with_siblings(model, set().union(*taken))):
        layer = model.get_submodule(layer_name)
        A, B = stack_updates(layer, [t.get(layer_name) for t in taken])
        parent, _, child = layer_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                MultiLoraLinear(layer, A, B, variants))
    model.row_variants = variants
    return model


def merge_adapter(directory: str | os.PathLike) -> Callable[[nn.Module], nn.Module]:
    """A function that loads the LoRA adapter in `directory` onto a float model and merges it
    into the base weights (plain nn.Linear layers again, fused as the base is)."""
    def adapt(model: nn.Module) -> nn.Module:
        return unload_lora(load_adapter(model, directory))

    return adapt


def inference_adapter(directory: str | os.PathLike, note: Callable[[str], None] = _stderr
                      ) -> Callable[[nn.Module], nn.Module]:
    """`--lora DIR` of generate, chat and eval: a function that puts the adapter in `directory`
    (any PEFT type) on a model as it was trained: on the float base (`float_base`), LoRA merged,
    QLoRA over the base quantized as it trained, prompt tuning and Houlsby adapters as loaded."""
    quant = trained_quant(directory)

    def adapt(model: nn.Module) -> nn.Module:
        model = load_peft(float_base(model, note), directory, quant=quant)
        if quant is not None:
            note(f"adapter: QLoRA, run over the base quantized to {quant.method} as it was trained "
                 "(not merged: a merge into 4 bits would not be exact)")
        elif lora_layers(model):
            model = unload_lora(model)  # merged: plain layers, decoded at the base's speed
        return model

    return adapt
