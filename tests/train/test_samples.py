"""Progress samples during training come from the inference engine's one decode step, handed
in from above (`train(cfg, sample=...)`): the training layer may not import inference."""

from __future__ import annotations

import torch

from lmstack.infer import Engine, sample_text
from lmstack.models import GPT, GPTConfig
from lmstack.train import load_config, train
from lmstack.train.checkpoint import read_log
from tests.train.conftest import run_overrides


def test_train_calls_the_sampler_every_sample_every_steps_and_keeps_training_exact(data_dir, tmp_path):
    seen = []

    def sample(model, tok):
        seen.append(model.training)
        return sample_text(model, tok, max_new_tokens=8)

    with_samples = tmp_path / "a"
    train(load_config(None, run_overrides(data_dir, with_samples, "steps=6", "sample_every=2")), sample=sample)
    assert len(seen) == 3
    without = tmp_path / "b"
    train(load_config(None, run_overrides(data_dir, without, "steps=6", "sample_every=2")))
    # sampling draws from its own seeded generator: the training stream is untouched
    assert [r["loss"] for r in read_log(with_samples)] == [r["loss"] for r in read_log(without)]


def test_sample_text_is_the_engines_generation_and_keeps_the_models_mode(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))
    model.train()
    text = sample_text(model, tok, "import", max_new_tokens=12, temperature=0.8, seed=3)
    assert model.training  # a training loop calls it between steps
    expected = Engine(model, tok).generate("import", temperature=0.8, max_new_tokens=12, seed=3).text
    assert text == expected and text
    long = "import os\n" * 40  # longer than the context: its end is kept
    assert isinstance(sample_text(model, tok, long, max_new_tokens=4), str)
