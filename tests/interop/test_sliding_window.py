"""Sliding-window checkpoints (Mistral, Qwen2 with use_sliding_window) built inside the test with
a window shorter than the input: our logits and greedy tokens match transformers past the
window, and export round-trips the window; half-windowed Qwen2 models are refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the dev extra; always installed in CI

from lmstack.errors import ConfigError  # noqa: E402
from lmstack.infer import Engine  # noqa: E402
from lmstack.interop import export_hf, load_hf_model  # noqa: E402
from lmstack.models import GPT  # noqa: E402

V, WINDOW = 96, 16
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def hf_model(kind: str, **overrides):
    """A random tiny checkpoint whose every layer attends over a window of WINDOW keys."""
    torch.manual_seed(0)
    if kind == "mistral":
        cfg = transformers.MistralConfig(**SMALL, sliding_window=WINDOW, **overrides)
    else:
        fields = dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0)
        cfg = transformers.Qwen2Config(**SMALL, **{**fields, **overrides})
    # eager: the attention written out, the reference least likely to take a shortcut.
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():  # HF initializes norms to 1 and biases to 0: make them count
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


def ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_logits_and_greedy_tokens_match_transformers_past_the_window(kind, tmp_path):
    theirs = hf_model(kind)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf")
    assert ours.config.sliding_window == WINDOW and ours.config.block_size == 128
    x = ids(2, 48)
    with torch.no_grad():
        expected = theirs(x).logits
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=0)
        # Negative control: the same weights attending over everything differ past the window.
        full = GPT(dataclasses.replace(ours.config, sliding_window=None)).eval()
        full.load_state_dict(ours.state_dict())
        assert (full(x)[:, WINDOW:] - expected[:, WINDOW:]).abs().max() > 1e-2
    # Greedy decoding through our KV cache runs far past the window (to 8 + 40 = 48 positions),
    # for one prompt and for a batch of prompts of different lengths.
    engine = Engine(ours)
    prompts = [x[0, :8].tolist(), x[1, :21].tolist()]
    assert engine.generate(prompts[0], temperature=0, max_new_tokens=40).tokens == hf_greedy(theirs, prompts[0], 40)
    batch = engine.generate(prompts, temperature=0, max_new_tokens=24)
    assert [c.tokens for c in batch] == [hf_greedy(theirs, p, 24) for p in prompts]


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_export_keeps_the_window(kind, tmp_path):
    theirs = hf_model(kind)
    theirs.save_pretrained(tmp_path / "hf")
    export_hf(load_hf_model(tmp_path / "hf"), None, tmp_path / "back")
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["model_type"] == kind and cfg["sliding_window"] == WINDOW
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    x = ids(1, 40)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, theirs(x).logits, atol=1e-4, rtol=0)


def test_a_qwen2_window_that_is_off_is_ignored_as_transformers_ignores_it(tmp_path):
    theirs = hf_model("qwen2", use_sliding_window=False)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf")
    assert ours.config.sliding_window is None
    x = ids(1, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x).logits, atol=1e-4, rtol=0)


def test_a_qwen2_model_windowed_in_some_layers_only_is_refused(tmp_path):
    hf_model("qwen2", max_window_layers=1).save_pretrained(tmp_path / "hf")  # layer 0 full, 1 windowed
    with pytest.raises(ConfigError, match="max_window_layers=1 is not supported"):
        load_hf_model(tmp_path / "hf")


def test_a_forward_past_max_position_embeddings_is_refused(tmp_path):
    hf_model("mistral").save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf")
    with pytest.raises(ConfigError, match="sequence length 129 exceeds block_size 128"):
        ours(torch.zeros(1, 129, dtype=torch.long))
