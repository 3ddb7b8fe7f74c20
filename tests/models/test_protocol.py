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
    with pytest.raises(ConfigError, match="out of range for vocab_size 20"):
        model(torch.tensor([[3, 20]]))
