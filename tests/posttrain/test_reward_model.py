"""Reward model: trained on a separable toy preference (positive words chosen, negative words
rejected) it ranks held-out pairs of unseen word combinations right; its Bradley–Terry loss
equals trl's RewardTrainer loss on the same rewards; it reads each row's last real token; it
round-trips through a model directory; and as the engine's scorer, best-of-N keeps the sample
it rewards most."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model
from lmstack.posttrain.preference import check_preference, collate_pairs, tokenize_pair
from lmstack.posttrain.reward_model import (
    REWARD_HEAD,
    RewardModel,
    bradley_terry_loss,
    evaluate_rewards,
    load_reward_model,
    pair_rewards,
    reward_loss,
    reward_scorer,
    scored_ids,
)
from lmstack.tokenizer.chat_template import ChatTemplate

CHATML = ChatTemplate()
GOOD = ["great", "good", "nice", "lovely", "superb", "fine"]
BAD = ["awful", "bad", "poor", "nasty", "dreadful", "sad"]


def toy_pairs(tok, n: int, seed: int):
    """Pairs whose chosen reply is a few positive words, the rejected one negative words."""
    rng = random.Random(seed)

    def words(pool):
        return " ".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))

    records = [{"prompt": f"Review item {rng.randint(0, 99)}.", "chosen": words(GOOD), "rejected": words(BAD)}
               for _ in range(n)]
    return [tokenize_pair(check_preference(r), tok, CHATML) for r in records if r["chosen"] != r["rejected"]]


def backbone(vocab: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=32,
                         position="rope", norm="rmsnorm", mlp="swiglu", bias=False))


@pytest.fixture(scope="module")
def trained(tok):
    """A reward model trained for 15 steps on 64 toy pairs, with its held-out pairs."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    train, held_out = toy_pairs(tok, 64, seed=1), toy_pairs(tok, 48, seed=2)
    model = RewardModel(backbone(tok.vocab_size))
    before = evaluate_rewards(model, held_out)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(15):
        batch = collate_pairs(rng.sample(train, 16))
        loss_sum, pairs = reward_loss(model, batch)
        optimizer.zero_grad()
        (loss_sum / pairs).backward()
        optimizer.step()
    return model.eval(), before, held_out


def test_a_separable_preference_is_learned_on_held_out_pairs(trained):
    model, before, held_out = trained
    after = evaluate_rewards(model, held_out)
    assert abs(before["loss"] - math.log(2)) < 0.1  # a fresh head: rewards near 0, loss near log 2
    assert before["accuracy"] < 0.75                 # and the untrained model ranks near chance
    assert after["accuracy"] >= 0.95 and after["loss"] < 0.2 and after["margin"] > 2, (before, after)


def test_bradley_terry_equals_trl_reward_trainer_loss():
    trl_reward = pytest.importorskip("trl.trainer.reward_trainer")
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(0))   # (2B,): chosen first
    trainer = trl_reward.RewardTrainer.__new__(trl_reward.RewardTrainer)
    trainer.__dict__.update(model=SimpleNamespace(training=True),
                            args=SimpleNamespace(center_rewards_coefficient=None),
                            accelerator=SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x),
                            _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    stub = lambda **kw: SimpleNamespace(logits=rewards[:, None])
    theirs = trainer.compute_loss(stub, {"input_ids": torch.zeros(8, 3, dtype=torch.long),
                                         "attention_mask": torch.ones(8, 3, dtype=torch.long)})
    ours = bradley_terry_loss(rewards[:4], rewards[4:])
    assert float(ours.mean()) == pytest.approx(float(theirs), abs=1e-6)
    assert trainer._metrics["train"]["accuracy"][-1] == pytest.approx(float((rewards[:4] > rewards[4:]).float().mean()))
    # Negative control: the pairs read the other way round are another loss.
    assert abs(float(bradley_terry_loss(rewards[4:], rewards[:4]).mean()) - float(theirs)) > 1e-3


def test_the_reward_reads_each_rows_last_real_token(tok, trained):
    model, _, held_out = trained
    ids, _, lengths = collate_pairs(held_out[:4])
    with torch.no_grad():
        together = model(ids, lengths)
        alone = torch.cat([model(ids[i:i + 1, :lengths[i]]) for i in range(len(ids))])
        padded_end = model(ids)  # without lengths the last position, padding for short rows
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    short = lengths < ids.size(1)
    assert short.any() and (padded_end[short] - together[short]).abs().min() > 1e-4


def test_save_and_load_round_trip(tmp_path, tok, trained):
    model, _, held_out = trained
    from lmstack.posttrain.reward_model import save_reward_model

    d = save_reward_model(tmp_path / "rm", model, tok)
    assert {"config.json", "model.safetensors", REWARD_HEAD, "tokenizer.json"} <= {p.name for p in d.iterdir()}
    loaded = load_reward_model(d)
    ids, _, lengths = collate_pairs(held_out[:3])
    with torch.no_grad():
        torch.testing.assert_close(pair_rewards(loaded, ids, lengths), pair_rewards(model, ids, lengths))
    with pytest.raises(ConfigError, match="is a language model, not a reward model"):
        load_reward_model(save_model(tmp_path / "lm", model.backbone))
    other = RewardModel(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)))
    save_model(tmp_path / "other", other.backbone)
    (tmp_path / "other" / REWARD_HEAD).write_bytes((d / REWARD_HEAD).read_bytes())
    with pytest.raises(ConfigError, match="belongs to another model"):
        load_reward_model(tmp_path / "other")
    with pytest.raises(ConfigError, match="has no `hidden` method"):
        RewardModel(torch.nn.Linear(2, 2))


def test_best_of_n_with_the_reward_scorer_keeps_the_most_rewarded_sample(tok, trained):
    model, _, _ = trained
    torch.manual_seed(3)
    engine = Engine(backbone(tok.vocab_size), tok)
    scorer = reward_scorer(model, tok, CHATML)
    prompt, settings, n = "Review item 7.", {"temperature": 1.0, "max_new_tokens": 6, "seed": 5}, 8
    # Sample j of a best-of-n call with seed s is the single sample drawn with seed s + j.
    samples = [engine.generate(prompt, **{**settings, "seed": 5 + j}) for j in range(n)]
    rewards = [scorer(prompt, c) for c in samples]
    assert len(set(rewards)) > 1  # the choice matters
    best = engine.generate(prompt, best_of=n, scorer=scorer, **settings)
    assert best.tokens == samples[rewards.index(max(rewards))].tokens and best.score == pytest.approx(max(rewards))
    # The scorer is the reward model on the ids training would make for this (prompt, reply).
    ids = scored_ids(tok, CHATML, prompt, best.text)
    with torch.no_grad():
        assert float(model(torch.tensor([ids]))) == pytest.approx(best.score, abs=1e-6)
    # and it prefers what it was trained to prefer
    assert scorer(prompt, SimpleNamespace(text="great nice")) > scorer(prompt, SimpleNamespace(text="awful sad"))
