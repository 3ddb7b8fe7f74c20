"""The model registry: `model_type` name -> model class, and `build_model` from a config.

A model directory's `config.json` names its architecture in `model_type`; `build_model` reads
that key, picks the class from `MODELS` and builds it from the rest. To add a model, write its
module (an `nn.Module` following protocol.py, with a config dataclass deriving from
`ModelConfig` and a `config_class` attribute) and add a line here.

    >>> model = build_model({"model_type": "lstm", "vocab_size": 16, "n_embd": 8, "hidden_size": 8})
    >>> type(model).__name__, model.config.cell
    ('RNNLM', 'lstm')
    >>> build_model({"model_type": "bert"})
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: model_type 'bert' is not one of ['gpt', 'gru', 'lstm', 'ngram']; pick one of them

Run: `pytest lmstack/models/registry.py tests/models/test_protocol.py`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lmstack.models.config import ModelConfig, require, require_choice
from lmstack.models.gpt import GPT
from lmstack.models.ngram import NGramLM
from lmstack.models.rnn import RNNLM

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "lstm": RNNLM, "gru": RNNLM, "ngram": NGramLM}


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """The config dataclass for a `config.json` dict, chosen by its `model_type`."""
    require("model_type" in d, f"config has no 'model_type'; add one of {sorted(MODELS)}")
    require_choice("model_type", d["model_type"], MODELS)
    return MODELS[d["model_type"]].config_class.from_dict(d)  # type: ignore[attr-defined]


def build_model(config: dict[str, Any] | ModelConfig) -> nn.Module:
    """A freshly initialized model from a config dataclass or its `to_dict()` form."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    require(isinstance(config, ModelConfig), f"expected a model config or dict, got {type(config).__name__}")
    return MODELS[config.model_type](config)
