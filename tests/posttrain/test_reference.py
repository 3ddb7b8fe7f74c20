"""The DPO reference: LoRA adapters switched off give the base model's logits exactly (and come
back on exit); a frozen copy or the adapters-off base make the loss log 2 at the start; a few
DPO steps on toy pairs with the adapters-off reference raise the margin while the base weights
stay put; and a reference that cannot serve is a clear error."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.peft.lora import LoraConfig, apply_lora, lora_layers, merge_lora
from lmstack.posttrain.preference import check_preference, collate_pairs, tokenize_pair
from lmstack.posttrain.preference_loss import PreferenceLossConfig
from lmstack.posttrain.reference import (
    adapters_disabled,
    batch_preference_loss,
    frozen_copy,
)
from lmstack.tokenizer.chat_template import ChatTemplate

LORA = LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj"))


def gpt(vocab: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=32,
                         position="rope", norm="rmsnorm", mlp="swiglu", bias=False))


def toy_batch(tok, n: int = 8, seed: int = 0):
    rng = random.Random(seed)
    good, bad = ["yes", "sure", "gladly"], ["no", "never", "nope"]
    records = [{"prompt": f"Will you help with task {i}?", "chosen": rng.choice(good), "rejected": rng.choice(bad)}
               for i in range(n)]
    return collate_pairs([tokenize_pair(check_preference(r), tok, ChatTemplate()) for r in records])


def test_adapters_disabled_is_the_base_exactly_and_comes_back(tok):
    base = gpt(tok.vocab_size)
    model = apply_lora(copy.deepcopy(base), LORA)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.5)  # a real update, not the zero start
    ids = torch.randint(0, tok.vocab_size, (2, 9))
    with torch.no_grad():
        adapted = model(ids)
        with adapters_disabled(model):
            off = model(ids)
        again = model(ids)
    torch.testing.assert_close(off, base(ids), atol=0, rtol=0)
    torch.testing.assert_close(again, adapted, atol=0, rtol=0)
    assert (adapted - off).abs().max() > 1e-3  # negative control: the adapters do change the model


def test_the_loss_starts_at_log_2_with_either_reference(tok):
    batch = toy_batch(tok)
    model = gpt(tok.vocab_size)
    loss, pairs, _out = batch_preference_loss(model, batch, PreferenceLossConfig("dpo"), frozen_copy(model))
    assert pairs == 8 and float(loss.detach()) / pairs == pytest.approx(math.log(2), abs=1e-6)
    lora = apply_lora(gpt(tok.vocab_size), LORA)  # a fresh adapter: B = 0, policy = base
    loss, pairs, _ = batch_preference_loss(lora, batch, PreferenceLossConfig("dpo"))
    assert float(loss.detach()) / pairs == pytest.approx(math.log(2), abs=1e-6)


def test_dpo_steps_with_the_adapters_off_reference_raise_the_margin(tok):
    batch = toy_batch(tok)
    model = apply_lora(gpt(tok.vocab_size), LORA)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    cfg = PreferenceLossConfig("dpo", beta=0.5)
    for _ in range(10):
        loss, pairs, out = batch_preference_loss(model, batch, cfg)
        optimizer.zero_grad()
        (loss / pairs).backward()
        optimizer.step()
    _, _, out = batch_preference_loss(model, batch, cfg)
    metrics = out.metrics()
    assert metrics["loss"] < math.log(2) - 0.2 and metrics["rewards/margin"] > 0.5, metrics
    assert metrics["rewards/accuracy"] == 1.0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_a_reference_that_cannot_serve_is_an_error(tok):
    batch = toy_batch(tok, n=2)
    with pytest.raises(ConfigError, match="no LoRA layers"):
        batch_preference_loss(gpt(tok.vocab_size), batch, PreferenceLossConfig("dpo"))
    with pytest.raises(ConfigError, match="vocabulary"):
        batch_preference_loss(gpt(tok.vocab_size), batch, PreferenceLossConfig("dpo"), gpt(tok.vocab_size + 1))
    merged = merge_lora(apply_lora(gpt(tok.vocab_size), LORA))  # the layers stay, marked merged
    with pytest.raises(ConfigError, match="merged into their weights"):
        batch_preference_loss(merged, batch, PreferenceLossConfig("dpo"))
    # SimPO and ORPO need no reference at all
    loss, pairs, _ = batch_preference_loss(gpt(tok.vocab_size), batch, PreferenceLossConfig("simpo"))
    assert pairs == 2 and torch.isfinite(loss)
