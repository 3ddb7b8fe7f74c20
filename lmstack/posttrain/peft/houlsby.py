"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP").

Every transformer block gets two small modules, one after the attention's output projection
and one after the MLP's last projection, each inside its sublayer's residual branch:

    h = W x + b                              the frozen projection (o_proj, down_proj)
    h + up(act(down(h)))                     down: (m, d), up: (d, m), m << d the bottleneck

`up` starts at zero, so each adapter starts as the identity and the adapted model as its
base; `down` starts N(0, 0.01) (the paper's near-identity initialization). Only the adapters
train: 2·(2·d·m + m + d) numbers a block. (The paper also trains the layer norms; here the
base stays wholly frozen, so an adapter directory holds the adapters alone.)

`HoulsbyLinear` is the projection nn.Linear with its adapter: it keeps the base's parameter
objects under their own names (`weight`, `bias`), so the model's state dict is unchanged and
the adapter adds `adapter_down.*`, `adapter_up.*` beside it.

    >>> import torch
    >>> from lmstack.models import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    >>> ids = torch.randint(0, 50, (1, 8))
    >>> base = model(ids)
    >>> model = apply_houlsby(model, HoulsbyConfig(bottleneck=8))
    >>> sorted(houlsby_layers(model))
    ['layers.0.attn.o_proj', 'layers.0.mlp.down_proj', 'layers.1.attn.o_proj', 'layers.1.mlp.down_proj']
    >>> torch.equal(model(ids), base)  # up = 0: the adapted model starts as its base
    True

On disk: an adapter directory (adapter_config.json with peft_type "HOULSBY", the bottleneck,
activation and adapted layers; adapter_model.safetensors with `{layer}.adapter_down.weight` ...
under our module names). Hugging Face PEFT has no bottleneck adapter, so this format is ours.

Run the tests: `pytest tests/posttrain/test_houlsby.py lmstack/posttrain/peft/houlsby.py --doctest-modules`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.errors import ConfigError
from lmstack.posttrain.peft.adapter import (
    read_method_config,
    read_tensors,
    write_adapter,
)
from lmstack.posttrain.peft.lora import LoraLinear, pattern_matches

PEFT_TYPE = "HOULSBY"
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
PARTS = ("adapter_down.weight", "adapter_down.bias", "adapter_up.weight", "adapter_up.bias")


@dataclass
class HoulsbyConfig:
    """The bottleneck width, its nonlinearity and the projections that get an adapter."""

    bottleneck: int = 64                 # m: the adapter's hidden width
    activation: str = "gelu"             # nonlinearity between down and up (ACTIVATIONS)
    init_std: float = 1e-2               # std of the down-projection's initial weights
    target_modules: tuple[str, ...] = ("attn.o_proj", "mlp.down_proj")  # after attention, after the MLP

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ConfigError(f"adapter bottleneck must be a positive integer, got {self.bottleneck!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"adapter activation {self.activation!r} is unknown; choose one of "
                              f"{sorted(ACTIVATIONS)}")
        if not self.init_std >= 0:
            raise ConfigError(f"adapter init_std must be >= 0, got {self.init_std!r}")
        if not self.target_modules:
            raise ConfigError("adapter target_modules is empty; the paper's are "
                              "('attn.o_proj', 'mlp.down_proj')")


class HoulsbyLinear(nn.Linear):
    """A frozen nn.Linear followed by a residual bottleneck adapter: h + up(act(down(h)))."""

    def __init__(self, base: nn.Linear, cfg: HoulsbyConfig) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the same parameter objects: no copy
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.adapter_down = nn.Linear(base.out_features, cfg.bottleneck, **kw)
        self.adapter_act = ACTIVATIONS[cfg.activation]()
        self.adapter_up = nn.Linear(cfg.bottleneck, base.out_features, **kw)
        nn.init.normal_(self.adapter_down.weight, std=cfg.init_std)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)  # the adapter starts as the identity
        nn.init.zeros_(self.adapter_up.bias)
        self.bottleneck, self.activation = cfg.bottleneck, cfg.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight, self.bias)                         # (..., d)
        return h + self.adapter_up(self.adapter_act(self.adapter_down(h)))  # (..., d) via (..., m)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bottleneck={self.bottleneck}, "
                f"activation={self.activation}")


def houlsby_layers(model: nn.Module) -> dict[str, HoulsbyLinear]:
    """The HoulsbyLinear layers of a model by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, HoulsbyLinear)}


def _targets(model: nn.Module, cfg: HoulsbyConfig) -> list[str]:
    """The Linear layers cfg.target_modules selects; ConfigError if a pattern selects none or
    a selected layer already carries an adapter or LoRA."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    unmatched = [p for p in cfg.target_modules if not any(pattern_matches(p, n) for n in names)]
    if unmatched:
        raise ConfigError(f"adapter target_modules {unmatched} match no Linear layer of this model; its "
                          f"layers are named like {names[:6]}. Apply adapters to an unfused GPT "
                          "(load_model / build_model), whose blocks have attn.o_proj and mlp.down_proj")
    targets = [n for n in names if any(pattern_matches(p, n) for p in cfg.target_modules)]
    modules = dict(model.named_modules())
    taken = [n for n in targets if isinstance(modules[n], (HoulsbyLinear, LoraLinear))]
    if taken:
        raise ConfigError(f"layers {taken[:4]} already carry an adapter or LoRA; start from a fresh base model")
    return targets


def apply_houlsby(model: nn.Module, cfg: HoulsbyConfig | None = None) -> nn.Module:
    """Give the targeted projections a bottleneck adapter and freeze every other parameter, in
    place; returns the model. ConfigError before any change on a bad config."""
    cfg = cfg if cfg is not None else HoulsbyConfig()
    targets = _targets(model, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, HoulsbyLinear(getattr(owner, child), cfg))
    return model


def houlsby_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters, for an optimizer."""
    return [p for layer in houlsby_layers(model).values()
            for p in (*layer.adapter_down.parameters(), *layer.adapter_up.parameters())]


def save_houlsby(model: nn.Module, directory: str | os.PathLike,
                 base_model_name_or_path: str | None = None) -> Path:
    """Write the model's bottleneck adapters as an adapter directory; returns it."""
    layers = houlsby_layers(model)
    if not layers:
        raise ConfigError("save_houlsby: the model has no adapters; apply_houlsby (and train) first")
    first = next(iter(layers.values()))
    tensors = {f"{name}.{part}": layer.get_parameter(part) for name, layer in layers.items() for part in PARTS}
    config = {"peft_type": PEFT_TYPE, "task_type": "CAUSAL_LM",
              "base_model_name_or_path": base_model_name_or_path,
              "bottleneck_size": first.bottleneck, "non_linearity": first.activation,
              "target_modules": sorted(layers),
              "hidden_sizes": {name: layer.out_features for name, layer in sorted(layers.items())}}
    return write_adapter(directory, config, tensors)


def _check_fits(model: nn.Module, d: dict, tensors: dict[str, torch.Tensor], source: Path) -> list[str]:
    """The adapted layer names, after ConfigError for a layer the model lacks, a width that
    differs, or tensors missing or extra."""
    targets = d.get("target_modules")
    m = d.get("bottleneck_size")
    if not isinstance(targets, list) or not targets or not isinstance(m, int) or m < 1:
        raise ConfigError(f"{source}: target_modules {targets!r} or bottleneck_size {m!r} is not valid; "
                          "the adapter config is corrupt")
    modules = dict(model.named_modules())
    for name in targets:
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise ConfigError(f"{source} is an adapter for another base: it adapts {name!r}, which this "
                              "model does not have; load it onto the model it was trained on")
        if tuple(tensors.get(f"{name}.adapter_down.weight", torch.empty(0)).shape) != (m, layer.out_features):
            raise ConfigError(f"{source} is an adapter for another base: layer {name!r} is "
                              f"{layer.out_features} wide here, its adapter_down.weight is "
                              f"{tuple(tensors.get(f'{name}.adapter_down.weight', torch.empty(0)).shape)} "
                              f"(bottleneck {m})")
    want = {f"{name}.{part}" for name in targets for part in PARTS}
    if set(tensors) != want:
        raise ConfigError(f"{source}: the adapter file's tensors do not match its config (missing "
                          f"{sorted(want - set(tensors))[:3]}, extra {sorted(set(tensors) - want)[:3]})")
    return targets


def load_houlsby(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the bottleneck adapters saved in `directory` to `model` in place and return it;
    ConfigError, before any change, if they do not fit this base."""
    d = Path(directory)
    config = read_method_config(d, PEFT_TYPE)
    tensors = read_tensors(d)
    targets = _check_fits(model, config, tensors, d)
    cfg = HoulsbyConfig(bottleneck=config["bottleneck_size"],
                        activation=config.get("non_linearity", "gelu"), target_modules=tuple(targets))
    apply_houlsby(model, cfg)
    with torch.no_grad():
        for name, layer in houlsby_layers(model).items():
            for part in PARTS:
                layer.get_parameter(part).copy_(tensors[f"{name}.{part}"])
    return model
