"""`lmstack rl` end to end on a small Llama-style GPT: GRPO and PPO run from the CLI and write
what they should, GRPO raises a toy task's reward, the rollout loader hands the trainer
consistent batches (the first ratio is exactly 1, skipped rewards leave the mask), `--resume`
continues exactly, and bad input is refused with a message that says what to do."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmstack.cli import main
from lmstack.data.word_problems import word_problems
from lmstack.errors import ConfigError
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import load_tokenizer, model_chat_template, save_model
from lmstack.models.protocol import IGNORE_INDEX
from lmstack.posttrain import rewards
from lmstack.posttrain.reward_model import RewardModel, save_reward_model
from lmstack.posttrain.rl_config import RLConfig
from lmstack.posttrain.rl_data import PromptLoader, check_prompt_record, tokenize_prompt
from lmstack.posttrain.rl_loader import RolloutLoader, RolloutMaker
from lmstack.posttrain.rl_math import clip_fraction, grpo_loss
from lmstack.posttrain.rl_objective import RLStats, policy_logprobs
from lmstack.posttrain.rl_reward import function_scorer, load_scorer
from lmstack.train.checkpoint import STATE, read_log
from lmstack.train.config import apply_overrides

TINY = {"block_size": 128, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64,
        "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "dropout": 0.0}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    """A base model directory, word-problem chats (their answer the assistant's message), and
    prompts of a toy task."""
    root = tmp_path_factory.mktemp("rl")
    torch.manual_seed(0)
    save_model(root / "base", GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY)))
    tok.save(root / "base" / "tokenizer.json")
    (root / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in word_problems(24, "train")))
    rng = random.Random(0)
    toy = [{"prompt": f"Say something {rng.randint(0, 999)}.", "answer": "x"} for _ in range(24)]
    (root / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy))
    return root


def rl(base, out, *settings: str, algo: str = "grpo", reward: str = "exact_answer",
       data: str = "problems.jsonl") -> int:
    return main(["rl", "--algo", algo, "--reward", reward, "--model", str(base / "base"),
                 "--data", str(base / data), "--out", str(out), "--set", "threads=1",
                 "block_size=96", "rl.k=4", "rl.prompts_per_step=2", "rl.max_new_tokens=6",
                 "rl.eval_prompts=4", "eval_every=2", "log_every=1", "progress=false",
                 "schedule.lr=1e-3", *settings])


def test_grpo_end_to_end(base, tmp_path):
    out = tmp_path / "grpo"
    assert rl(base, out, "steps=2", "rl.beta=0.04") == 0
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2]
    for key in ("reward", "reward_std", "accuracy", "kl", "clip_fraction", "skipped_rewards",
                "completion_tokens"):
        assert key in log[0], key
    assert log[-1]["val_loss"] == pytest.approx(1 - log[-1]["val_accuracy"])
    assert (out / "model.safetensors").exists() and (out / "train_config.json").exists()
    png = tmp_path / "rl.png"
    assert main(["plot", str(out), "--metrics", "reward", "val_reward", "accuracy", "kl",
                 "--out", str(png)]) == 0 and png.stat().st_size > 0


def test_ppo_with_a_reward_model_end_to_end(base, tmp_path, tok):
    torch.manual_seed(1)
    rm = tmp_path / "rm"
    save_reward_model(rm, RewardModel(GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY))), tok)
    out = tmp_path / "ppo"
    assert rl(base, out, "steps=2", "rl.epochs=2", "peft.method=lora", "schedule.lr=1e-2",
              algo="ppo", reward=str(rm)) == 0
    log = read_log(out)
    assert {"reward", "kl", "clip_fraction", "value_loss"} <= log[0].keys()
    assert "val_reward" in log[-1] and log[-1]["val_loss"] == -log[-1]["val_reward"]
    assert (out / "value_head.safetensors").exists() and (out / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_rl_raises_the_reward_of_a_toy_task(base, tmp_path, algo):
    """A verifiable toy task: the one-token reply must begin with whitespace (about a third of
    the untrained model's samples do). Ten steps of GRPO, or of PPO with one step per rollout
    batch, make it nearly always so."""
    out = tmp_path / "toy"
    assert rl(base, out, "steps=10", "eval_every=0", "rl.k=8", "rl.prompts_per_step=4",
              "rl.max_new_tokens=1", "rl.epochs=1", r"rl.pattern=\s.*", "schedule.lr=3e-2",
              algo=algo, reward="regex", data="toy.jsonl") == 0
    rewards = [r["reward"] for r in read_log(out)]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.4, rewards


@pytest.mark.parametrize(("algo", "settings"), [
    ("grpo", ("rl.epochs=2", "grad_accum=2", "rl.beta=0.04", "schedule.lr=3e-2")),
    ("ppo", ("rl.epochs=2", "peft.method=lora", "schedule.lr=3e-2")),
])
def test_resume_continues_exactly(base, tmp_path, algo, settings):
    """Checkpoints at step 3 fall inside a rollout batch (2 steps each): the pending batch is
    saved, so the resumed run takes the same steps on the same samples."""
    common = ("schedule.total_steps=6", "save_every=3", "eval_every=3", "rl.max_new_tokens=2",
              r"rl.pattern=\s.*", *settings)
    for out, steps in (("straight", 6), ("split", 3)):
        assert rl(base, tmp_path / out, f"steps={steps}", *common, algo=algo, reward="regex",
                  data="toy.jsonl") == 0
    assert rl(base, tmp_path / "split", "steps=6", "resume=true", *common, algo=algo,
              reward="regex", data="toy.jsonl") == 0
    timing = ("elapsed_s", "tokens_per_s", "mfu")
    a, b = ([{k: v for k, v in r.items() if k not in timing} for r in read_log(tmp_path / out)]
            for out in ("straight", "split"))
    assert [r["step"] for r in a] == list(range(1, 7)) and a == b
    assert len({r["loss"] for r in a}) > 1  # the run learns something: the check has teeth
    sa = torch.load(tmp_path / "straight" / STATE, weights_only=False)["model"]
    sb = torch.load(tmp_path / "split" / STATE, weights_only=False)["model"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def flaky(prompt, completion: str) -> float:
    """A user's reward with a bug: it fails on every other completion length."""
    if len(completion) % 2:
        raise ValueError("odd")
    return float("nan") if len(completion) % 4 == 2 else 1.0


@pytest.fixture
def maker(base, tok):
    """A rollout maker over the base, with the flaky reward, and 2 prompts."""
    cfg = apply_overrides(RLConfig(), [f"base_model={base / 'base'}", "block_size=96", "rl.k=4",
                                       "rl.prompts_per_step=2", "rl.max_new_tokens=6",
                                       "rl.epochs=2", "grad_accum=2"]).check()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY))
    template = model_chat_template(base / "base")
    records = [check_prompt_record(json.loads(line)) for line in
               (base / "problems.jsonl").read_text().splitlines()[:4]]
    prompts = [tokenize_prompt(r, tok, template) for r in records]
    settings = {"temperature": 1.5, "max_new_tokens": 6}
    make = RolloutMaker(model, None, False, function_scorer(flaky, "flaky"), tok, settings, None,
                        cfg, torch.device("cpu"), RLStats(), verbose=False)
    return make, prompts


def test_the_loader_hands_out_consistent_rollout_batches(maker):
    make, prompts = maker
    loader = RolloutLoader(PromptLoader(prompts, 2, seed=0), make, epochs=2, micro_batches=2)
    micro = [loader.next_batch() for _ in range(4)]  # 2 epochs x 2 micro-batches: one rollout batch
    batch = [torch.cat(parts) for parts in zip(micro[0], micro[1])]
    for a, b in zip(micro[:2], micro[2:]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # epoch 2 sees epoch 1's batch
    ids, labels, adv, old_logp = batch[:4]
    mask = labels != IGNORE_INDEX
    logp, _ = policy_logprobs(make.model, ids, labels)
    assert torch.equal(logp.detach(), old_logp)  # at epoch 0 the ratio is exactly 1
    assert clip_fraction(logp, old_logp, mask) == 0.0
    loss, _ = grpo_loss(logp, old_logp, adv, mask)
    torch.testing.assert_close(loss, -(adv * mask).sum())  # ratio 1: the loss is -Σ A
    skipped = ~mask.any(-1)  # the flaky reward's failures leave the mask entirely
    assert skipped.any() and (~skipped).any()
    assert make.stats.rollout["skipped_rewards"] == int(skipped.sum())
    assert (adv[skipped] == 0).all()
    per_row = adv.sum(-1) / mask.sum(-1).clamp(min=1)  # one advantage per sample
    assert torch.allclose(per_row.view(2, 4).sum(-1), torch.zeros(2), atol=1e-5)
    assert not torch.equal(loader.next_batch()[0], micro[0][0])  # then a fresh rollout batch


def test_the_loader_state_holds_the_pending_batch(maker):
    make, prompts = maker
    a = RolloutLoader(PromptLoader(prompts, 2, seed=0), make, epochs=2, micro_batches=2)
    a.next_batch()
    state = a.state_dict()
    assert state["pending"] is not None  # mid-epochs: the batch cannot be sampled again
    rest = [a.next_batch() for _ in range(4)]
    make.model.lm_head.weight.data.mul_(0.5)  # the weights moved on: a new sample would differ
    b = RolloutLoader(PromptLoader(prompts, 2, seed=0), make, epochs=2, micro_batches=2)
    b.load_state_dict(state)
    for x in rest[:3]:
        assert all(torch.equal(p, q) for p, q in zip(x, b.next_batch()))


def test_a_reward_that_always_raises_is_skipped_not_a_crash(base, tmp_path, monkeypatch, capsys):
    def broken():
        return lambda prompt, completion: 1 / 0
    monkeypatch.setitem(rewards.REWARDS, "broken", broken)
    out = tmp_path / "broken"
    assert rl(base, out, "steps=2", reward="broken") == 0
    log = read_log(out)
    assert all(r["skipped_rewards"] == 8 for r in log), log
    assert "skipped (raised: 8)" in capsys.readouterr().out


@pytest.mark.parametrize(("line", "settings", "words"), [
    ({"prompt": "What is 2 plus 2?"}, (), ["problems.jsonl:25", '"answer"']),
    ({"answer": "4"}, (), ["problems.jsonl:25", '"prompt"']),
    (None, ("rl.k=1",), ["rl.k >= 2", "algo=ppo"]),
    (None, ("rl.max_new_tokens=96",), ["no room"]),
    (None, ("rl.prompts_per_step=40",), ["fewer than one step"]),
])
def test_bad_input_is_refused_before_anything_is_written(base, tmp_path, capsys, line, settings, words):
    data = tmp_path / "problems.jsonl"
    data.write_text((base / "problems.jsonl").read_text() + (json.dumps(line) + "\n" if line else ""))
    out = tmp_path / "out"
    code = main(["rl", "--model", str(base / "base"), "--data", str(data), "--out", str(out),
                 "--set", "steps=2", "block_size=96", "progress=false", *settings])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert all(w in err for w in words), err


def test_a_reward_model_of_another_vocabulary_is_refused(base, tmp_path, tok, capsys):
    rm = tmp_path / "rm"
    other = GPT(GPTConfig(**{**TINY, "vocab_size": tok.vocab_size + 8}))
    save_reward_model(rm, RewardModel(other))
    assert load_tokenizer(rm) is None
    out = tmp_path / "out"
    assert rl(base, out, "steps=1", reward=str(rm)) == 2
    err = capsys.readouterr().err
    assert "another vocabulary" in err and not out.exists(), err


def test_python_rewards_take_their_options_from_the_rl_table(tmp_path, tok):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name"]}))
    policy = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY))
    cases = [("json_schema", [f"rl.schema={schema}"], ['{"name": 1}', '{"age": 1}', "nope"], [1, 0, 0]),
             ("json_schema", [], ['{"a": 1}', '{"b": 1}', "nope"], [1, 0, 0]),  # each record's schema
             ("regex", [r"rl.pattern=\d+"], ["42", "4 2", ""], [1, 0, 0])]
    record = {"messages": [], "schema": {"type": "object", "required": ["a"]}}
    for reward, settings, texts, want in cases:
        cfg = apply_overrides(RLConfig(), [f"reward={reward}", *settings]).check()
        scorer = load_scorer(cfg, policy, tok)
        got, valid = scorer.score([record] * 3, [[]] * 3, texts, rewards.RewardReport())
        assert got.tolist() == want and valid.all() and scorer.binary, (reward, settings)
    with pytest.raises(ConfigError, match="rl.pattern"):
        apply_overrides(RLConfig(), ["reward=regex"]).check()
