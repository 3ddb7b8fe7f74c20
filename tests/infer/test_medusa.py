"""Medusa heads: decoding with them is plain greedy token for token; training them on a frozen
model (`lmstack train-heads`) saves heads that load back; bad input is a clear error."""

from __future__ import annotations

import argparse

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model
from lmstack.models.medusa_heads import HEADS_CONFIG, HEADS_WEIGHTS, MedusaHeads, load_heads, save_heads
from lmstack.train.commands import add_train_heads_args
from lmstack.train.heads import HeadsTrainConfig, cmd_train_heads, train_heads

torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared 2-core machine


def gpt(vocab: int, seed: int, n_embd: int = 32) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=96, n_layer=2, n_head=2, n_embd=n_embd,
                         position="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=False,
                         init_std=0.1)).eval()


def random_heads(model: GPT, k: int, seed: int) -> MedusaHeads:
    """Heads whose proposals are sometimes right, sometimes not."""
    heads = MedusaHeads.for_model(model, k)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return heads.eval()


@pytest.fixture(scope="module")
def engine(tok):
    return Engine(gpt(tok.vocab_size, seed=0), tok)


PROMPTS = ["def main():\n    return", "import os\nimport sys\nimport", "x"]


@pytest.mark.parametrize("k", [1, 3])
def test_medusa_greedy_is_plain_greedy(engine, k):
    decoder = engine.speculative(medusa=random_heads(engine.model, k, seed=k))
    assert decoder.gamma == k
    for prompt in PROMPTS:
        plain = engine.generate(prompt, temperature=0, max_new_tokens=30, ignore_eos=True)
        spec = decoder.generate(prompt, temperature=0, max_new_tokens=30, ignore_eos=True)
        assert (spec.tokens, spec.text, spec.finish_reason) == \
            (plain.tokens, plain.text, plain.finish_reason)
        assert decoder.stats.target_passes == 30 - decoder.stats.accepted
        assert decoder.stats.proposed > 0 and decoder.stats.draft_passes == 0


def test_untrained_heads_accept_on_a_repeating_model(tok):
    # Fresh heads copy lm_head: each proposes the base's next token again, which is right for
    # a model that repeats itself (tied embeddings at the default init copy the last token).
    torch.manual_seed(0)
    parrot = Engine(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2,
                                  n_embd=32)).eval(), tok)
    decoder = parrot.speculative(medusa=MedusaHeads.for_model(parrot.model, 4))
    plain = parrot.generate("ab ab ab", temperature=0, max_new_tokens=25)
    spec = decoder.generate("ab ab ab", temperature=0, max_new_tokens=25)
    assert spec.tokens == plain.tokens
    assert decoder.stats.acceptance_rate > 0.75 and decoder.stats.target_passes <= 8


@pytest.mark.parametrize("max_new", [0, 1, 2, 3, 7])
def test_max_new_tokens_stop_strings_and_stream(engine, max_new):
    decoder = engine.speculative(medusa=random_heads(engine.model, 3, seed=5), gamma=2)
    plain = engine.generate(PROMPTS[0], temperature=0, max_new_tokens=max_new, ignore_eos=True)
    spec = decoder.generate(PROMPTS[0], temperature=0, max_new_tokens=max_new, ignore_eos=True)
    assert spec.tokens == plain.tokens and spec.finish_reason == plain.finish_reason == "length"
    full = engine.generate(PROMPTS[0], temperature=0, max_new_tokens=30, ignore_eos=True)
    stop = full.text[len(full.text) // 2:][:2]
    plain = engine.generate(PROMPTS[0], temperature=0, max_new_tokens=30, ignore_eos=True, stop=[stop])
    deltas = list(decoder.stream(PROMPTS[0], temperature=0, max_new_tokens=30, ignore_eos=True,
                                 stop=[stop]))
    assert "".join(deltas) == plain.text and decoder.last.tokens == plain.tokens
    assert decoder.last.finish_reason == "stop"


def test_medusa_sampling_is_seeded(engine):
    decoder = engine.speculative(medusa=random_heads(engine.model, 2, seed=1))
    a = decoder.generate(PROMPTS[1], temperature=0.8, seed=3, max_new_tokens=16, ignore_eos=True)
    b = decoder.generate(PROMPTS[1], temperature=0.8, seed=3, max_new_tokens=16, ignore_eos=True)
    assert a.tokens == b.tokens and len(a.tokens) == 16


def test_train_heads_command_saves_heads_that_decode_exactly(tok, corpus, tmp_path):
    model_dir = tmp_path / "base"
    base = gpt(tok.vocab_size, seed=1)
    save_model(model_dir, base)
    tok.save(model_dir / "tokenizer.json")
    text = tmp_path / "code.txt"
    text.write_text("\n".join(corpus[:4]))
    p = argparse.ArgumentParser()
    add_train_heads_args(p)
    args = p.parse_args(["--model", str(model_dir), "--data", str(text), "--heads", "2",
                         "--steps", "30", "--batch-size", "4", "--block-size", "32",
                         "--lr", "3e-3", "--quiet"])
    cmd_train_heads(args)
    result = train_heads(HeadsTrainConfig(model=str(model_dir), data=[str(text)], heads=2, steps=30,
                                          batch_size=4, block_size=32, lr=3e-3, progress=False,
                                          out=str(tmp_path / "heads")))
    assert result["steps"] == 30 and result["loss"] < result["first_loss"]
    assert (tmp_path / "heads" / HEADS_WEIGHTS).exists()
    assert (model_dir / HEADS_WEIGHTS).exists() and (model_dir / HEADS_CONFIG).exists()
    assert not [f for f in model_dir.iterdir() if f.name.endswith(".tmp")]
    heads = load_heads(model_dir)
    assert heads.config.num_heads == 2 and heads.config.n_embd == 32
    engine = Engine.load(model_dir)
    decoder = engine.speculative(medusa=model_dir)
    plain = engine.generate(PROMPTS[0], temperature=0, max_new_tokens=20, ignore_eos=True)
    spec = decoder.generate(PROMPTS[0], temperature=0, max_new_tokens=20, ignore_eos=True)
    assert spec.tokens == plain.tokens


def test_bad_input(engine, tok, tmp_path):
    other = MedusaHeads.for_model(gpt(tok.vocab_size, seed=3, n_embd=16), 2)
    with pytest.raises(ConfigError, match="n_embd"):
        engine.speculative(medusa=other)
    with pytest.raises(ConfigError, match="no Medusa heads"):
        engine.speculative(medusa=tmp_path)
    with pytest.raises(ConfigError, match="gamma"):
        engine.speculative(medusa=random_heads(engine.model, 2, seed=0), gamma=0)
    save_heads(tmp_path / "h", random_heads(engine.model, 2, seed=0))
    with pytest.warns(UserWarning, match="other weights"):
        Engine(gpt(tok.vocab_size, seed=9), tok).speculative(medusa=tmp_path / "h")
    with pytest.raises(ConfigError, match="heads"):
        HeadsTrainConfig(data=["x"], heads=0).check()
    with pytest.raises(ConfigError, match="--data"):
        HeadsTrainConfig(data=[]).check()
