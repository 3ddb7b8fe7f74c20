"""LoRA: low-rank adaptation of a frozen model (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models").

A targeted linear layer y = W x + b keeps W frozen and learns a rank-r update:

    y = W x + b + (alpha / r) · B A dropout(x)        A: (r, in), B: (out, r)

A starts Kaiming-uniform and B at zero, so the adapted model starts equal to its base; only A
and B train (r·(in + out) numbers a layer instead of in·out). `merge_lora` folds the update into
W (W += (alpha / r) B A) so decoding costs nothing extra; `unmerge_lora` takes it out again.

Which layers: `LoraConfig.target_modules` holds name patterns, matched against each nn.Linear's
module name (`layers.0.attn.q_proj`): a pattern matches a name it equals, a dotted suffix of
it (`q_proj`, `attn.v_proj`) or an fnmatch pattern over the whole name (`layers.*.attn.v_proj`,
`layers.[01].mlp.*`). Apply LoRA to an unfused model (load_model / build_model give one):
`Engine.load`'s decode preparation (lmstack/infer/fuse.py) stacks q/k/v into one qkv_proj and
leaves LoraLinear layers unfused, so a LoRA model decodes either merged or unfused.

    >>> import torch
    >>> from lmstack.models import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    >>> ids = torch.randint(0, 50, (1, 8))
    >>> base = model(ids)
    >>> model = apply_lora(model, LoraConfig(r=4))
    >>> sorted(lora_state_dict(model))[:2]
    ['layers.0.attn.q_proj.lora_A.weight', 'layers.0.attn.q_proj.lora_B.weight']
    >>> torch.equal(model(ids), base)  # B = 0: the adapted model starts as its base
    True

Saving and loading adapters in Hugging Face PEFT's format: adapter.py.
Run the tests: `pytest tests/posttrain/test_lora.py lmstack/posttrain/peft/lora.py --doctest-modules`.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.errors import ConfigError
from lmstack.infer.quantize import QuantLinear


@dataclass
class LoraConfig:
    """What to adapt and how: rank, scale, dropout and the target layers' name patterns."""

    r: int = 8                    # rank of the update B A
    alpha: float = 16.0           # the update is scaled by alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.0          # on the LoRA branch's input, while training
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # name patterns (see the module doc)
    use_rslora: bool = False      # Kalajievski 2023: scale by alpha / sqrt(r), stable at large r

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout {self.dropout!r} must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError("LoRA target_modules is empty; name the layers to adapt, "
                              "e.g. ('q_proj', 'v_proj')")

    @property
    def scaling(self) -> float:
        """The factor on B A x: alpha / r, or alpha / sqrt(r) with rslora."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


class LoraLinear(nn.Linear):
    """An nn.Linear with a frozen weight (and bias) plus a trainable low-rank update.

    The base's parameters keep their names (`weight`, `bias`), so the model's own state dict is
    unchanged; the update adds `lora_A.weight` (r, in) and `lora_B.weight` (out, r)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the same parameter objects: no copy
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kw = {"bias": False, "device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, r, **kw)
        self.lora_B = nn.Linear(r, base.out_features, **kw)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's own init
        nn.init.zeros_(self.lora_B.weight)  # so the update starts at zero
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r, self.alpha, self.dropout_p, self.use_rslora = r, alpha, dropout, use_rslora
        self.scaling = alpha / (math.sqrt(r) if use_rslora else r)
        self.merged = False  # True while B A is folded into weight (merge_lora)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """W x + b, plus scaling · B A dropout(x) unless merged into W."""
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update as a matrix, scaling · B A: (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the weight: W += scaling · B A (no-op if merged)."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the weight again (no-op if not merged)."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}, "
                f"dropout={self.dropout_p}, merged={self.merged}")


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether a target pattern selects module `name`: equal, a dotted suffix, or fnmatch.

    >>> [pattern_matches(p, "layers.3.attn.v_proj") for p in ("v_proj", "attn.v_proj", "layers.*.v_proj", "proj")]
    [True, True, True, False]
    """
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """The LoraLinear layers of a model by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def linear_names(model: nn.Module) -> list[str]:
    """Names of the nn.Linear layers LoRA may target (not the A and B of existing LoRA layers)."""
    inner = {f"{n}.{part}" for n in lora_layers(model) for part in ("lora_A", "lora_B")}
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in inner]


def find_targets(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """The Linear layers `patterns` select; ConfigError naming any pattern that selects none."""
    names = linear_names(model)
    unmatched = [p for p in patterns if not any(pattern_matches(p, n) for n in names)]
    if unmatched:
        fused = any(n.endswith(("qkv_proj", "gate_up_proj")) for n in names)
        hint = (" The model's projections are fused (qkv_proj, gate_up_proj: Engine.load's "
                "decode preparation); apply LoRA to an unfused model from load_model or build_model."
                if fused else "")
        if any(isinstance(m, QuantLinear) for m in model.modules()):
            hint += " Quantized layers (int8/int4) take no LoRA yet (QLoRA is to come)."
        raise ConfigError(f"LoRA target_modules {unmatched} match no Linear layer of this model; "
                          f"its layers are named like {names[:6]}{' ...' if len(names) > 6 else ''}. "
                          "Use a suffix ('q_proj') or an fnmatch pattern ('layers.*.attn.v_proj')." + hint)
    return [n for n in names if any(pattern_matches(p, n) for p in patterns)]


def _check_target(model: nn.Module, name: str, layer: nn.Linear, r: int) -> None:
    """ConfigError if `layer` cannot take a rank-r LoRA: rank too large, or a shared weight."""
    if r > min(layer.in_features, layer.out_features):
        raise ConfigError(f"LoRA rank r={r} is larger than layer {name!r} allows "
                          f"(in {layer.in_features}, out {layer.out_features}: at most "
                          f"{min(layer.in_features, layer.out_features)}); choose a smaller r")
    shared = [n for n, p in model.named_parameters(remove_duplicate=False)
              if p is layer.weight and not n.startswith(name + ".")]
    if shared:  # a tied lm_head: merging B A into it would change the embedding too
        raise ConfigError(f"layer {name!r} shares its weight with {shared}; a LoRA update on it "
                          "could not be merged. Leave it out of target_modules")
    if isinstance(layer, LoraLinear):
        raise ConfigError(f"layer {name!r} already has a LoRA update; merge_lora it or start "
                          "from a fresh base model")


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Wrap the layers `cfg.target_modules` selects in LoraLinear and freeze every other
    parameter, in place; returns the model. ConfigError before any change on a bad config."""
    targets = find_targets(model, cfg.target_modules)
    modules = dict(model.named_modules())
    for name in targets:
        _check_target(model, name, modules[name], cfg.r)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, LoraLinear(modules[name], cfg.r, cfg.alpha, cfg.dropout, cfg.use_rslora))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight (decoding then costs nothing extra)."""
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("merge_lora: the model has no LoRA layers; apply_lora or load_adapter first")
    for layer in layers.values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every merged LoRA update out of its base weight again (up to float rounding)."""
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def unload_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA update and put plain nn.Linear layers back (same parameter objects), in
    place: a model with the base's state-dict names, for save_model, export_hf or fusing."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight, plain.bias = layer.weight, layer.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors alone, by our names: `{module}.lora_A.weight`, `{module}.lora_B.weight`."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A.weight"] = layer.lora_A.weight.detach()
        out[f"{name}.lora_B.weight"] = layer.lora_B.weight.detach()
    return out


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA parameters (A and B of every LoraLinear), for an optimizer."""
    return [p for layer in lora_layers(model).values()
            for p in (layer.lora_A.weight, layer.lora_B.weight)]


@dataclass
class LoraSummary:
    """How much of a model LoRA trains."""

    trainable: int
    total: int
    layers: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"LoRA: {len(self.layers)} layers, {self.trainable:,} trainable of "
                f"{self.total:,} parameters ({100 * self.trainable / max(self.total, 1):.2f}%)")


def lora_summary(model: nn.Module) -> LoraSummary:
    """Trainable and total parameter counts (shared weights counted once) and the LoRA layers."""
    params = list(model.parameters())  # deduplicated: a tied head counts once
    return LoraSummary(sum(p.numel() for p in params if p.requires_grad),
                       sum(p.numel() for p in params), sorted(lora_layers(model)))
