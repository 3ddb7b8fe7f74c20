"""Configs: config.json round trips, clear errors for bad fields, the registry."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.models import (
    GPT, MODELS, RNNLM, GPTConfig, NGramConfig, NGramLM, RNNConfig, build_model, config_from_dict,
)

gpt_configs = st.builds(
    GPTConfig,
    vocab_size=st.integers(1, 100), block_size=st.integers(1, 64), n_layer=st.integers(1, 3),
    n_head=st.just(4), n_kv_head=st.sampled_from([None, 1, 2, 4]), n_embd=st.sampled_from([8, 16, 32]),
    position=st.sampled_from(["learned", "rope", "alibi", "none"]), rope_theta=st.floats(1.0, 1e6),
    norm=st.sampled_from(["layernorm", "rmsnorm"]), mlp=st.sampled_from(["gelu", "relu", "relu2", "swiglu"]),
    intermediate_size=st.sampled_from([None, 24]), dropout=st.sampled_from([0.0, 0.1]),
    bias=st.booleans(), tie_embeddings=st.booleans(), qk_norm=st.booleans(),
    attn_impl=st.sampled_from(["sdpa", "manual"]), sliding_window=st.sampled_from([None, 1, 4096]),
)


@settings(max_examples=30, deadline=None)
@given(gpt_configs)
def test_gpt_config_round_trips_through_json(config):
    d = json.loads(json.dumps(config.to_dict()))
    assert d["model_type"] == "gpt"
    assert GPTConfig.from_dict(d) == config
    assert config_from_dict(d) == config


@pytest.mark.parametrize("config", [
    RNNConfig(cell="gru", n_layer=3, dropout=0.2), RNNConfig(cell="lstm", n_embd=32, hidden_size=32, tie_embeddings=True),
    NGramConfig(order=5, smoothing="add_k", k=0.5), NGramConfig(discount=0.7),
])
def test_other_configs_round_trip(config):
    d = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(d) == config == config_from_dict(d)


def test_json_integers_become_floats():
    config = GPTConfig.from_dict({"rope_theta": 500000, "dropout": 0})
    assert config.rope_theta == 500000.0 and isinstance(config.rope_theta, float)


@pytest.mark.parametrize("fields,message", [
    ({"n_embd": 100, "n_head": 3},
     "n_embd 100 is not divisible by n_head 3; choose n_embd as a multiple of n_head"),
    ({"n_head": 4, "n_kv_head": 3}, "n_kv_head 3 must divide n_head 4"),
    ({"n_head": 4, "n_kv_head": 8}, "n_kv_head 8 must divide n_head 4"),
    ({"position": "sinusoidal"}, "position 'sinusoidal' is not one of"),
    ({"norm": "batchnorm"}, "norm 'batchnorm' is not one of"),
    ({"mlp": "geglu"}, "mlp 'geglu' is not one of"),
    ({"attn_impl": "flash"}, "attn_impl 'flash' is not one of"),
    ({"dropout": 1.0}, "dropout 1.0 must be in"),
    ({"sliding_window": 0}, "sliding_window must be at least 1 or null"),
    ({"n_layer": 0}, "n_layer must be at least 1"),
    ({"position": "rope", "n_embd": 12, "n_head": 4}, "head_dim .* must be even"),
    ({"n_head": "4"}, "GPTConfig.n_head must be int, got '4'"),
    ({"bias": 1}, "GPTConfig.bias must be bool"),
    ({"n_layer": True}, "GPTConfig.n_layer must be int, got True"),
    ({"n_layers": 2}, "GPTConfig has no field 'n_layers'; valid fields: vocab_size, block_size, n_layer"),
    ({"model_type": "lstm"}, "model_type 'lstm' is not one of \\['gpt'\\]"),
])
def test_bad_gpt_configs_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig.from_dict(fields)


@pytest.mark.parametrize("cls,fields,message", [
    (RNNConfig, {"cell": "rnn"}, "cell 'rnn' is not one of"),
    (RNNConfig, {"model_type": "gru", "cell": "lstm"}, "model_type 'gru' disagrees with cell 'lstm'"),
    (NGramConfig, {"k": 0.0}, "k 0.0 must be positive"),
    (NGramConfig, {"discount": 1.5}, "discount 1.5 must be in"),
    (NGramConfig, {"order": 0}, "order must be at least 1"),
    (NGramConfig, {"smoothing": "witten_bell"}, "smoothing 'witten_bell' is not one of"),
])
def test_bad_other_configs_name_the_field(cls, fields, message):
    with pytest.raises(ConfigError, match=message):
        cls.from_dict(fields)


def test_build_model_picks_the_class_from_model_type():
    assert set(MODELS) == {"gpt", "lstm", "gru", "ngram"}
    assert isinstance(build_model({"model_type": "gpt", "n_layer": 1}), GPT)
    gru = build_model({"model_type": "gru"})
    assert isinstance(gru, RNNLM) and isinstance(gru.rnn, torch.nn.GRU)
    assert isinstance(build_model(NGramConfig(order=2)), NGramLM)
    with pytest.raises(ConfigError, match="config has no 'model_type'"):
        build_model({"n_layer": 2})


@pytest.mark.parametrize("config", [
    GPTConfig(n_layer=1, position="rope", mlp="swiglu", norm="rmsnorm", n_kv_head=2, tie_embeddings=False),
    RNNConfig(cell="gru"),
])
def test_a_model_rebuilt_from_its_config_dict_loads_its_weights(config):
    model = build_model(config)
    twin = build_model(json.loads(json.dumps(model.config.to_dict())))
    twin.load_state_dict(model.state_dict())  # same names and shapes, or this raises
    idx = torch.randint(0, 256, (1, 6))
    torch.testing.assert_close(twin.eval()(idx), model.eval()(idx))
