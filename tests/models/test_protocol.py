"""Every registered model follows the language model protocol the trainer and decoders rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import MODELS, Cache, LanguageModel, build_model

from .helpers import cached_logits

SMALL = {
    "gpt": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16, "position": "rope"},
    "lstm": {"n_embd": 16, "hidden_size": 16},
    "gru": {"n_embd": 16, "hidden_size": 16},
    "ngram": {"order": 3},
}


@pytest.fixture(params=sorted(MODELS))
def model(request):
    torch.manual_seed(0)
    m = build_model({"model_type": request.param, "vocab_size": 20, **SMALL[request.param]})
    if request.param == "ngram":
        m.fit(np.random.default_rng(0).integers(0, 20, 500))
    return m.eval()


def test_every_model_type_is_covered():
    assert set(SMALL) == set(MODELS)


def test_ids_to_logits_and_cache(model):
    assert isinstance(model, LanguageModel)
    idx = torch.randint(0, 20, (3, 9))
    with torch.no_grad():
        logits = model(idx)
        assert logits.shape == (3, 9, 20) and logits.dtype == torch.float32
        cache = model.new_cache(3, 16)
        assert isinstance(cache, Cache) and cache.batch_size == 3 and cache.length == 0
        torch.testing.assert_close(cached_logits(model, idx, 4, max_len=16), logits, rtol=0, atol=1e-5)
    assert model.config.to_dict()["model_type"] in MODELS


def test_bad_ids_are_refused_at_the_boundary(model):
    # Shape and dtype are checked on every forward (metadata, no device sync); id values are
    # checked where ids enter (Engine.encode; the trainer's shards), not here.
    with pytest.raises(ConfigError, match=r"\(batch, time\) tensor"):
        model(torch.tensor([3, 4]))
    with pytest.raises(ConfigError, match="integer tensor"):
        model(torch.tensor([[3.0, 4.0]]))


@torch.no_grad()
def test_every_model_takes_lengths_and_last_only(model):
    # The engine passes both to any model (protocol.py): no caller needs to ask which it takes.
    idx = torch.randint(0, 20, (3, 9))
    full = model(idx)
    torch.testing.assert_close(model(idx, last_only=True), full[:, -1:], rtol=0, atol=1e-5)
    lengths = torch.tensor([9, 4, 6])  # right padding: each row's last real token
    got = model(idx, cache=model.new_cache(3, 16), lengths=lengths, last_only=True)
    assert got.shape == (3, 1, 20)
    torch.testing.assert_close(got[:, 0], full[torch.arange(3), lengths - 1], rtol=0, atol=1e-5)
