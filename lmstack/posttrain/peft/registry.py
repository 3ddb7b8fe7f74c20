"""One entry for every PEFT method: apply it from its config, find which one a model carries,
hand its trainable parameters to an optimizer, and save or load its adapter directory, which
`load_peft` picks from adapter_config.json's `peft_type`.

| peft_type | method | config | adapter directory |
|---|---|---|---|
| LORA | LoRA (lora.py), QLoRA (qlora.py: LoRA over a 4-bit base) | LoraConfig (+ QuantConfig) | Hugging Face PEFT's |
| PROMPT_TUNING | prompt tuning (prompt_tuning.py) | PromptTuningConfig | Hugging Face PEFT's |
| HOULSBY | bottleneck adapters (houlsby.py) | HoulsbyConfig | ours |

    model = apply_peft(load_model("runs/base"), LoraConfig(r=8))     # or QLoRA: quant=QuantConfig()
    opt = torch.optim.AdamW(peft_parameters(model), lr=1e-3)
    ...
    save_peft(model, "runs/adapter")
    model = load_peft(load_model("runs/base"), "runs/adapter")       # use the returned model

Prompt tuning wraps the model (PromptTuningModel), so `apply_peft` and `load_peft` return a new
module: always use their return value.

Run the tests: `pytest tests/posttrain/test_peft_registry.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lmstack.errors import ConfigError
from lmstack.interop.hf import read_json
from lmstack.posttrain.peft import houlsby, prompt_tuning
from lmstack.posttrain.peft.adapter import ADAPTER_CONFIG, load_adapter, save_adapter
from lmstack.posttrain.peft.lora import (
    LoraConfig,
    apply_lora,
    lora_layers,
    lora_parameters,
)
from lmstack.posttrain.peft.qlora import QuantConfig, apply_qlora, quantize_base


@dataclass(frozen=True)
class PeftMethod:
    """What lmstack needs of a PEFT method: its config class, and functions to apply it, tell
    whether a model carries it, list what trains, save and load it."""

    config_class: type
    apply: Callable[[nn.Module, object], nn.Module]
    present: Callable[[nn.Module], bool]
    parameters: Callable[[nn.Module], list[nn.Parameter]]
    save: Callable[..., Path]                       # (model, directory, base_model_name_or_path)
    load: Callable[[nn.Module, Path], nn.Module]


PEFT_METHODS = {
    "LORA": PeftMethod(LoraConfig, apply_lora, lambda m: bool(lora_layers(m)), lora_parameters,
                       save_adapter, load_adapter),
    prompt_tuning.PEFT_TYPE: PeftMethod(
        prompt_tuning.PromptTuningConfig, prompt_tuning.apply_prompt_tuning,
        lambda m: isinstance(m, prompt_tuning.PromptTuningModel), lambda m: [m.prompt_embeddings],
        prompt_tuning.save_prompt_tuning, prompt_tuning.load_prompt_tuning),
    houlsby.PEFT_TYPE: PeftMethod(houlsby.HoulsbyConfig, houlsby.apply_houlsby,
                                  lambda m: bool(houlsby.houlsby_layers(m)), houlsby.houlsby_parameters,
                                  houlsby.save_houlsby, houlsby.load_houlsby),
}


def apply_peft(model: nn.Module, config: object, quant: QuantConfig | None = None) -> nn.Module:
    """Apply the method whose config `config` is; with `quant` (LoRA only), QLoRA: the base
    stored in 4 bits. Returns the model to train (a new wrapper for prompt tuning)."""
    kinds = {m.config_class: name for name, m in PEFT_METHODS.items()}
    name = kinds.get(type(config))
    if name is None:
        raise ConfigError(f"{type(config).__name__} is not a PEFT config; use one of "
                          f"{sorted(c.__name__ for c in kinds)}")
    if quant is not None:
        if name != "LORA":
            raise ConfigError(f"a quantized base (QLoRA) takes LoRA only, not {name}; drop the quantization")
        return apply_qlora(model, config, quant)
    return PEFT_METHODS[name].apply(model, config)


def peft_method(model: nn.Module) -> str:
    """The peft_type of the one PEFT method `model` carries; ConfigError for none or several."""
    found = [name for name, m in PEFT_METHODS.items() if m.present(model)]
    if len(found) != 1:
        what = "no PEFT method" if not found else f"several PEFT methods ({found})"
        raise ConfigError(f"the model carries {what}; apply one (apply_peft) before saving or "
                          "training its parameters alone")
    return found[0]


def peft_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of the model's PEFT method: what to give the optimizer."""
    return PEFT_METHODS[peft_method(model)].parameters(model)


def save_peft(model: nn.Module, directory: str | os.PathLike,
              base_model_name_or_path: str | None = None) -> Path:
    """Save the model's adapter (whichever method it carries) as an adapter directory."""
    return PEFT_METHODS[peft_method(model)].save(model, directory, base_model_name_or_path)


def load_peft(model: nn.Module, directory: str | os.PathLike, quant: QuantConfig | None = None) -> nn.Module:
    """Load the adapter in `directory` onto the base `model`, the method chosen by its
    adapter_config.json's peft_type; with `quant` (LoRA only) the base is then stored in 4
    bits (QLoRA). Returns the adapted model (a new wrapper for prompt tuning)."""
    path = Path(directory) / ADAPTER_CONFIG
    peft_type = read_json(path).get("peft_type")
    if peft_type not in PEFT_METHODS:
        raise ConfigError(f"{path}: peft_type {peft_type!r} is not one lmstack loads; it loads "
                          f"{sorted(PEFT_METHODS)}")
    if quant is not None and peft_type != "LORA":
        raise ConfigError(f"{path} is a {peft_type} adapter; a quantized base (QLoRA) takes LoRA adapters only")
    model = PEFT_METHODS[peft_type].load(model, Path(directory))
    return quantize_base(model, quant) if quant is not None else model
