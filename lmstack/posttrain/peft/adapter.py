"""LoRA adapters on disk, in Hugging Face PEFT's directory format: save one alone (a few MB), load
it onto its base, and exchange adapters with the `peft` library both ways.

An adapter directory holds two files:

- `adapter_config.json`: PEFT's `LoraConfig` fields — peft_type "LORA", r, lora_alpha,
  lora_dropout, target_modules, bias "none", task_type "CAUSAL_LM", use_rslora,
  base_model_name_or_path, ...
- `adapter_model.safetensors`: for each adapted layer, `lora_A.weight` (r, in) and
  `lora_B.weight` (out, r), under the name the layer has in the transformers model wrapped by
  PEFT: `base_model.model.` + the transformers module name.

For a GPT of the Llama family (Llama, Mistral, Qwen2: what lmstack/interop exports), our module
names are translated with interop's weight-name table (lmstack/interop/weights.py):
`layers.0.attn.q_proj` is written `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`,
so `peft.PeftModel.from_pretrained(<the exported HF model>, DIR)` computes the same logits, and
an adapter `peft` saved for that model loads here. Other models (GPT-2's family, whose HF layout
fuses q, k, v into one `c_attn`, or our own architectures) keep our module names behind the
same prefix: they load back into lmstack, not into `peft`.

    save_adapter(model, "runs/my-lora")               # after apply_lora and training
    model = load_adapter(load_model("runs/base"), "runs/my-lora")

Run the tests: `pytest tests/posttrain/test_lora.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmstack.atomic import atomic_open, atomic_write_json
from lmstack.errors import ConfigError
from lmstack.interop.config import hf_family
from lmstack.interop.hf import read_json
from lmstack.interop.weights import LLAMA
from lmstack.models.gpt import GPTConfig
from lmstack.posttrain.peft.lora import (
    LoraConfig,
    apply_lora,
    linear_names,
    lora_layers,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
# Fields of PEFT's LoraConfig whose non-default values change the computation in ways we do not
# model; an adapter setting one is refused rather than silently run differently.
UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "modules_to_save": None,
               "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
               "lora_bias": False, "layer_replication": None, "trainable_token_indices": None,
               "target_parameters": None}


def hf_module_names(model: nn.Module) -> dict[str, str]:
    """Our module name -> the transformers one, for a GPT of the Llama family; {} otherwise
    (the adapter then keeps our names)."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, GPTConfig):
        return {}
    try:
        if hf_family(cfg) == "gpt2":
            return {}
    except ConfigError:
        return {}  # an architecture of ours with no HF counterpart
    names = {}
    for hf, ours in LLAMA:  # (HF parameter name, ours), {i} the layer
        for i in range(cfg.n_layer) if "{i}" in hf else [None]:
            names[ours.format(i=i).removesuffix(".weight")] = hf.format(i=i).removesuffix(".weight")
    return names


def _uniform(layers: dict, what: str) -> object:
    """The one value of `what` the LoRA layers share; ConfigError if they differ."""
    values = {getattr(layer, what) for layer in layers.values()}
    if len(values) != 1:
        raise ConfigError(f"the LoRA layers differ in {what} ({sorted(values)}); an adapter "
                          "directory holds one setting for all (per-layer patterns: not yet)")
    return values.pop()


def _target_list(model: nn.Module, adapted: list[str], names: dict[str, str]) -> list[str]:
    """adapter_config's target_modules: for each kind of layer (`q_proj`), the short name when
    every layer of that kind is adapted, else the full names of those adapted (PEFT matches both)."""
    def kind(name: str) -> str:
        return name.rsplit(".", 1)[-1]

    out = []
    for k in sorted({kind(n) for n in adapted}):
        mine = {n for n in adapted if kind(n) == k}
        if mine == {n for n in linear_names(model) if kind(n) == k}:
            out.append(k)
        else:
            out += [names.get(n, n) for n in sorted(mine)]
    return sorted(out)


def write_adapter(directory: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write an adapter directory (any PEFT method), each file atomically; returns it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_open(d / ADAPTER_WEIGHTS) as f:
        save_file(tensors, f.name, metadata={"format": "pt"})
    atomic_write_json(d / ADAPTER_CONFIG, config)
    return d


def save_adapter(model: nn.Module, directory: str | os.PathLike,
                 base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA layers as a PEFT adapter directory; returns it."""
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("save_adapter: the model has no LoRA layers; apply_lora (and train) first")
    names = hf_module_names(model)
    tensors = {}
    for name, layer in layers.items():
        key = PREFIX + names.get(name, name)
        tensors[f"{key}.lora_A.weight"] = layer.lora_A.weight.detach().cpu().contiguous()
        tensors[f"{key}.lora_B.weight"] = layer.lora_B.weight.detach().cpu().contiguous()
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": _uniform(layers, "r"), "lora_alpha": _uniform(layers, "alpha"),
        "lora_dropout": _uniform(layers, "dropout_p"), "use_rslora": _uniform(layers, "use_rslora"),
        "target_modules": _target_list(model, sorted(layers), names),
        "bias": "none", "inference_mode": True, "init_lora_weights": True, **UNSUPPORTED,
    }
    return write_adapter(directory, config, tensors)


def read_method_config(directory: Path, peft_type: str) -> dict:
    """adapter_config.json of a `peft_type` adapter (any method) as a dict; ConfigError if
    it is missing or of another method."""
    path = Path(directory) / ADAPTER_CONFIG
    d = read_json(path)
    if d.get("peft_type") != peft_type:
        raise ConfigError(f"{path}: peft_type {d.get('peft_type')!r} is not {peft_type!r}; "
                          "load it with load_peft, which picks the method from the file")
    return d


def read_adapter_config(directory: Path) -> LoraConfig:
    """Our LoraConfig from a PEFT adapter_config.json (target_modules filled in later);
    ConfigError for an adapter kind or option we do not run."""
    path = directory / ADAPTER_CONFIG
    d = read_json(path)
    if d.get("peft_type") != "LORA":
        raise ConfigError(f"{path}: peft_type {d.get('peft_type')!r} is not 'LORA'; only LoRA "
                          "adapters load here")
    if d.get("bias", "none") != "none":
        raise ConfigError(f"{path}: bias={d['bias']!r} trains the base's biases too; only "
                          "bias 'none' adapters load")
    for field_name, default in UNSUPPORTED.items():
        value = d.get(field_name, default)
        if value not in (default, None, False, {}, []):
            raise ConfigError(f"{path}: {field_name}={value!r} is not supported; lmstack loads "
                              "plain LoRA adapters (one r and alpha, no DoRA, no extra modules)")
    try:
        return LoraConfig(r=int(d["r"]), alpha=float(d["lora_alpha"]),
                          dropout=float(d.get("lora_dropout", 0.0)),
                          use_rslora=bool(d.get("use_rslora", False)), target_modules=("*",))
    except KeyError as e:
        raise ConfigError(f"{path} lacks the field {e}; it is not a LoRA adapter config") from None


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter directory's adapter_model.safetensors (any PEFT method);
    ConfigError if the file is missing or unreadable."""
    path = directory / ADAPTER_WEIGHTS
    if not path.exists():
        raise ConfigError(f"{directory} has no {ADAPTER_WEIGHTS}; it is not an adapter directory "
                          "(pickled adapter_model.bin is not read: re-save it with safetensors)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path} cannot be read as safetensors ({e}); the file is corrupt") from None


def _adapter_layers(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Our module name -> (A, B) for each layer the adapter holds; ConfigError for a key that
    is not a LoRA tensor or names a layer this model does not have."""
    ours = {hf: our for our, hf in hf_module_names(model).items()}
    linears = set(linear_names(model))
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, part = key.removeprefix(PREFIX).rpartition(".lora_")
        if not key.startswith(PREFIX) or part not in ("A.weight", "B.weight"):
            raise ConfigError(f"{source}: tensor {key!r} is not a LoRA A/B weight under "
                              f"{PREFIX!r}; the adapter is of another kind")
        name = ours.get(module, module)
        if name not in linears:
            raise ConfigError(f"{source} is an adapter for another base: it adapts {module!r}, "
                              f"which this model does not have (its layers are named like "
                              f"{sorted(linears)[:4]}); load it onto the model it was trained on")
        found.setdefault(name, {})[part[0]] = tensor
    incomplete = [n for n, parts in found.items() if set(parts) != {"A", "B"}]
    if incomplete or not found:
        raise ConfigError(f"{source}: {'no LoRA tensors' if not found else f'A or B missing for {incomplete[:4]}'}; "
                          "the adapter file is incomplete")
    return {n: (parts["A"], parts["B"]) for n, parts in found.items()}


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the LoRA adapter saved in `directory` (ours or PEFT's) to `model` in place and
    return it; ConfigError, before any change, if it does not fit this base."""
    d = Path(directory)
    cfg = read_adapter_config(d)
    if lora_layers(model):
        raise ConfigError("load_adapter: the model already has LoRA layers; load the adapter "
                          "onto a fresh base (or merge_lora the present one first and reload)")
    layers = _adapter_layers(model, read_tensors(d), d)
    modules = dict(model.named_modules())
    for name, (a, b) in layers.items():
        base = modules[name]
        want_a, want_b = (cfg.r, base.in_features), (base.out_features, cfg.r)
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            raise ConfigError(f"{d} is an adapter for another base: layer {name!r} has A "
                              f"{tuple(a.shape)} and B {tuple(b.shape)}, but r={cfg.r} on this "
                              f"model's ({base.out_features}, {base.in_features}) weight needs "
                              f"{want_a} and {want_b}")
    cfg.target_modules = tuple(sorted(layers))  # exact names: each selects itself
    apply_lora(model, cfg)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            a, b = layers[name]
            layer.lora_A.weight.copy_(a)
            layer.lora_B.weight.copy_(b)
    return model
