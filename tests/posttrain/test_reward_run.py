"""`lmstack reward` end to end on a tiny GPT: on a separable toy preference (positive words
chosen, negative ones rejected) it reaches high held-out accuracy where an untrained head is
near chance; it writes a reward model directory that loads back and scores what it trained
(full and LoRA, merged); it logs the step's accuracy and margin; it resumes exactly; and bad
input is refused with the line that holds it, before anything is written."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from lmstack.cli import main
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import load_tokenizer, model_chat_template, save_model
from lmstack.posttrain.pair_loader import PairLoader, load_pair_data
from lmstack.posttrain.preference import PreferencePair
from lmstack.posttrain.reward_config import RewardConfig
from lmstack.posttrain.reward_model import (
    evaluate_rewards,
    load_reward_model,
    reward_scorer,
)
from lmstack.posttrain.sft_data import Example
from lmstack.train.checkpoint import STATE, read_log
from lmstack.train.config import load_config

GOOD = ["great", "good", "nice", "lovely", "superb", "fine"]
BAD = ["awful", "bad", "poor", "nasty", "dreadful", "sad"]


def toy_records(n: int, seed: int) -> list[dict]:
    """Pairs whose chosen reply is a few positive words and the rejected one negative words."""
    rng = random.Random(seed)

    def words(pool):
        return " ".join(rng.choice(pool) for _ in range(rng.randint(1, 3)))

    return [{"prompt": f"Review item {rng.randint(0, 99)}.", "chosen": words(GOOD),
             "rejected": words(BAD)} for _ in range(n)]


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    """A tiny base model directory and 96 toy pairs."""
    root = tmp_path_factory.mktemp("reward")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                          n_embd=32, position="rope", norm="rmsnorm", mlp="swiglu", bias=False))
    save_model(root / "base", model)
    tok.save(root / "base" / "tokenizer.json")
    write_jsonl(root / "pairs.jsonl", toy_records(96, seed=1))
    return root


COMMON = ("batch_size=8", "block_size=48", "val_fraction=0.25", "eval_every=10", "eval_batches=8",
          "progress=false", "schedule.warmup_steps=0", "log_every=1")


def settings(*extra: str) -> list[str]:
    return [*COMMON, *extra]


def reward(base, out, *extra: str, data=None) -> int:
    return main(["reward", "--model", str(base / "base"), "--data", str(data or base / "pairs.jsonl"),
                 "--out", str(out), "--threads", "2", "--set", *settings(*extra)])


def held_out(base, out, *extra: str):
    """The held-out pairs of a run with these settings, as the run split them."""
    cfg = load_config(None, [f"base_model={base / 'base'}", f"data={base / 'pairs.jsonl'}",
                             f"out_dir={out}", *settings(*extra)], kind=RewardConfig)
    return load_pair_data(cfg, load_tokenizer(cfg.base_model)).val


def test_a_separable_preference_reaches_high_held_out_accuracy(base, tmp_path):
    out, untrained = tmp_path / "rm", tmp_path / "untrained"
    # The starting point: one step at a vanishing learning rate.
    assert reward(base, untrained, "steps=1", "schedule.lr=1e-12", "schedule.min_lr=0") == 0
    assert reward(base, out, "steps=10", "schedule.lr=3e-3") == 0
    before, after = read_log(untrained)[-1], read_log(out)[-1]
    assert before["val_accuracy"] < 0.8 and abs(before["val_loss"] - 0.6931) < 0.1, before
    assert after["val_accuracy"] >= 0.95 and after["val_margin"] > 1.0, after
    assert after["val_loss"] < before["val_loss"] - 0.3
    steps = read_log(out)
    assert all({"accuracy", "margin", "chosen_reward", "rejected_reward"} <= r.keys() for r in steps)
    # OUT is a reward model directory: loaded back, it scores the held-out pairs as the run did.
    model = load_reward_model(out)
    again = evaluate_rewards(model, held_out(base, out))
    assert again["accuracy"] == pytest.approx(after["val_accuracy"])
    assert again["loss"] == pytest.approx(after["val_loss"], rel=1e-5)
    # ... and ranks best-of-N replies with the chat template it trained with.
    score = reward_scorer(model, load_tokenizer(out), model_chat_template(out))
    assert score("Review item 7.", SimpleNamespace(text="great nice")) > \
        score("Review item 7.", SimpleNamespace(text="awful sad"))


def test_lora_trains_the_head_and_adapters_and_writes_them_merged(base, tmp_path):
    out = tmp_path / "lora"
    extra = ("steps=10", "schedule.lr=1e-2", "peft.method=lora", "peft.r=4")
    assert reward(base, out, *extra) == 0
    state = torch.load(out / STATE, weights_only=False)["model"]
    assert any(k.startswith("head.") for k in state) and any(".lora_" in k for k in state)
    assert all(k.startswith("head.") or ".lora_" in k for k in state)  # the base is not copied
    model = load_reward_model(out)  # whole weights: the adapters merged in
    assert not any("lora" in k for k in model.state_dict())
    last = read_log(out)[-1]
    again = evaluate_rewards(model, held_out(base, out, *extra))
    assert again["loss"] == pytest.approx(last["val_loss"], rel=1e-4)


def test_full_fine_tuning_leaves_a_tied_lm_head_training_with_the_embedding(base, tmp_path):
    out = tmp_path / "full"
    assert reward(base, out, "steps=2", "schedule.lr=1e-3") == 0
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["trainable"] == summary["total"]  # tied: the embedding is the LM head


def test_an_untied_lm_head_stops_training_the_embedding_does_not():
    from lmstack.posttrain.reward_run import freeze_lm_head

    untied = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16,
                           tie_embeddings=False))
    freeze_lm_head(untied)
    assert not untied.lm_head.weight.requires_grad and untied.wte.weight.requires_grad
    tied = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    freeze_lm_head(tied)
    assert tied.lm_head.weight.requires_grad  # it is the embedding


def test_resume_continues_exactly(base, tmp_path):
    common = ("schedule.total_steps=6", "save_every=3", "schedule.lr=3e-3", "eval_every=3")
    assert reward(base, tmp_path / "straight", "steps=6", *common) == 0
    assert reward(base, tmp_path / "split", "steps=3", *common) == 0
    assert reward(base, tmp_path / "split", "steps=6", "resume=true", *common) == 0
    a = {r["step"]: r for r in read_log(tmp_path / "straight")}
    b = {r["step"]: r for r in read_log(tmp_path / "split")}
    for step, record in a.items():
        for key in ("loss", "accuracy", "margin", "val_loss"):
            assert record.get(key) == b[step].get(key), (step, key)
    sa = torch.load(tmp_path / "straight" / STATE, weights_only=False)["model"]
    sb = torch.load(tmp_path / "split" / STATE, weights_only=False)["model"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_pair_loader_deals_every_pair_once_an_epoch_across_ranks():
    pairs = [PreferencePair(Example([1, i, 2], [0, 1, 1]), Example([1, i, 3], [0, 1, 1]), f"x:{i}")
             for i in range(10, 46)]
    ranks = [PairLoader(pairs, 3, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = []
    for _ in range(2 * len(pairs) // 6):  # two epochs
        for loader in ranks:
            ids, labels, lengths = loader.next_batch()
            assert ids.shape == labels.shape == (6, 3) and lengths.tolist() == [3] * 6
            assert (ids[:3, 1] == ids[3:, 1]).all() and (ids[:3, 2] == 2).all()  # chosen rows first
            seen += ids[:3, 1].tolist()
    first, second = seen[:36], seen[36:]
    assert sorted(first) == sorted(second) == list(range(10, 46))  # each pair once an epoch
    assert first != second  # in a new order


@pytest.mark.parametrize(("line", "extra", "words"), [
    ("{not json", (), ["pairs.jsonl:97", "JSON"]),
    (json.dumps({"prompt": "Hi", "chosen": "same", "rejected": "same"}), (), ["pairs.jsonl:97", "identical"]),
    (json.dumps({"prompt": "Hi", "chosen": "yes"}), (), ["pairs.jsonl:97", '"rejected"']),
    (None, ("block_size=8",), ["no preference pair is left", "block_size"]),
    (None, ("peft.method=prompt",), ["peft.method", "full, lora"]),
])
def test_bad_input_is_refused_before_anything_is_written(base, tmp_path, capsys, line, extra, words):
    data = tmp_path / "pairs.jsonl"
    data.write_text((base / "pairs.jsonl").read_text() + (line + "\n" if line else ""))
    out = tmp_path / "out"
    code = reward(base, out, "steps=2", *extra, data=data)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert all(w in err for w in words) and "Traceback" not in err, err
