"""The model directory: how a model lives on disk, for every command that takes `--model DIR`.

    DIR/config.json        the architecture (`model.config.to_dict()`, with `model_type`)
    DIR/model.safetensors  the weights (neural models), or DIR/ngram.npz (the n-gram counts)
    DIR/tokenizer.json     the tokenizer the ids come from

A quantized model (`lmstack quantize`) has a "quantization" entry in config.json and its
int8/int4 tensors in model.safetensors; `load_model` rebuilds the quantized layers.
A training run adds `train_state.pt` and `log.jsonl` (lmstack.train.checkpoint). Every file is
written to a temporary name and renamed, so a reader never sees a half-written one.

    >>> import tempfile
    >>> from lmstack.models import build_model
    >>> model = build_model({"model_type": "gru", "vocab_size": 8, "n_embd": 4, "hidden_size": 4})
    >>> d = save_model(tempfile.mkdtemp(), model)
    >>> sorted(p.name for p in d.iterdir())
    ['config.json', 'model.safetensors']
    >>> loaded = load_model(d)
    >>> all((a == b).all() for a, b in zip(model.state_dict().values(),
    ...                                    loaded.state_dict().values()))
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from lmstack.atomic import atomic_open, atomic_write_json
from lmstack.errors import ConfigError
from lmstack.models.ngram import NGramLM
from lmstack.models.registry import build_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
NGRAM = "ngram.npz"


def save_model(directory: str | os.PathLike, model: torch.nn.Module) -> Path:
    """Write config.json and the weights into `directory` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(model, NGramLM):
        with atomic_open(d / NGRAM) as f:
            model.save(f.name)
    else:
        with atomic_open(d / WEIGHTS) as f:
            # safetensors' save_model drops the duplicate of tied (shared) tensors.
            st_save_model(model, f.name)
    config = model.config.to_dict()
    if getattr(model, "quantization", None):  # lmstack/infer/quantize.py
        config["quantization"] = model.quantization
    atomic_write_json(d / CONFIG, config)
    return d


def read_config(directory: str | os.PathLike) -> dict:
    """The config.json dict of a model directory, with errors naming the file."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise ConfigError(f"{directory} is not a model directory: it has no {CONFIG}; "
                          "train one with `lmstack train` or point --model at one")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the file is corrupt") from None


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model of a model directory and load its weights (eval mode)."""
    d = Path(directory)
    config = read_config(d)
    if "architectures" in config or "transformers_version" in config:
        # A Hugging Face directory: converted on the fly, in memory (lmstack/interop).
        from lmstack.interop.hf import load_hf_model

        return load_hf_model(d, device=device)
    if config.get("model_type") == "ngram":
        if not (d / NGRAM).exists():
            raise ConfigError(f"{d} has an n-gram config but no {NGRAM}")
        return NGramLM.load(d / NGRAM).eval()
    quantization = config.pop("quantization", None)
    model = build_model(config)
    if quantization is not None:
        # Weight-only int8/int4 (lmstack/infer/quantize.py): swap in the empty quantized
        # layers the weights file holds, then load it as usual. Imported on demand, as the
        # HF conversion above is, so that the models layer does not depend on inference.
        from lmstack.infer.quantize import prepare_quantized

        prepare_quantized(model, quantization)
    path = d / WEIGHTS
    if not path.exists():
        raise ConfigError(f"{d} has no {WEIGHTS}; the model directory is incomplete")
    try:
        missing, unexpected = st_load_model(model, str(path), strict=False, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ConfigError(f"{path} cannot be read as safetensors weights for this config ({e}); "
                          "the file is corrupt or belongs to another model") from None
    if missing or unexpected:
        raise ConfigError(f"{path} does not match {d / CONFIG}: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")
    return model.to(device).eval()
