"""The model registry: `model_type` name -> model class, and `build_model` from a config.

A model directory's `config.json` names its architecture in `model_type`; `build_model` reads
that key, picks the class from `MODELS` and builds it from the rest. To add a model, write its
module (an `nn.Module` following protocol.py, with a config dataclass deriving from
`ModelConfig` and a `config_class` attribute) and add a line here. `MODELS` holds the language
models (every one follows protocol.py, and the tests check it); `ENCODERS` the models that map
ids to hidden states or per-sequence outputs instead (encoder.py). Both build and load alike.

    >>> model = build_model({"model_type": "lstm", "vocab_size": 16, "n_embd": 8, "hidden_size": 8})
    >>> type(model).__name__, model.config.cell
    ('RNNLM', 'lstm')
    >>> type(build_model({"model_type": "encoder", "n_layer": 1})).__name__
    'Encoder'
    >>> build_model({"model_type": "t5"})
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: model_type 't5' is not one of ['encoder', 'gpt', 'gru', 'lstm', 'ngram']; pick one of them

Run: `pytest lmstack/models/registry.py tests/models/test_protocol.py`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lmstack.models.config import ModelConfig, require, require_choice
from lmstack.models.encoder import Encoder
from lmstack.models.gpt import GPT
from lmstack.models.ngram import NGramLM
from lmstack.models.rnn import RNNLM

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "lstm": RNNLM, "gru": RNNLM, "ngram": NGramLM}
ENCODERS: dict[str, type[nn.Module]] = {"encoder": Encoder}


def model_class(model_type: str) -> type[nn.Module]:
    """The class registered for a `model_type`, language model or encoder."""
    every = {**MODELS, **ENCODERS}
    require_choice("model_type", model_type, every)
    return every[model_type]


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """The config dataclass for a `config.json` dict, chosen by its `model_type`."""
    require("model_type" in d, f"config has no 'model_type'; add one of {sorted({**MODELS, **ENCODERS})}")
    return model_class(d["model_type"]).config_class.from_dict(d)  # type: ignore[attr-defined]


def build_model(config: dict[str, Any] | ModelConfig) -> nn.Module:
    """A freshly initialized model from a config dataclass or its `to_dict()` form."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    require(isinstance(config, ModelConfig), f"expected a model config or dict, got {type(config).__name__}")
    return model_class(config.model_type)(config)
