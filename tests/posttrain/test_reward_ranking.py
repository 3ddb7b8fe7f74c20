"""Best-of-N ranked by a reward model in the engine's callers: a reward model trained on a GPT
backbone and loaded from its directory scores exactly what RewardModel.forward gives for the
same ids (chat and plain layouts); `lmstack generate --best-of N --reward-model DIR` prints the
samples in the order of those rewards (not of their log-probability); `lmstack chat` answers
with the most rewarded reply; a reward model with another tokenizer is refused, naming both."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmstack.cli import main
from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model
from lmstack.posttrain.preference import (
    check_preference,
    collate_pairs,
    completion_example,
    tokenize_pair,
)
from lmstack.posttrain.reward_model import (
    RewardModel,
    reward_loss,
    save_reward_model,
    scored_ids,
)
from lmstack.posttrain.reward_ranking import RewardRanker, load_reward_ranker
from lmstack.serve.terminal import ChatSession
from lmstack.tokenizer.chat_template import ChatTemplate

CHATML = ChatTemplate()
PROMPT = "def main("


def tiny_gpt(vocab: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=32,
                         position="rope", norm="rmsnorm", mlp="swiglu", bias=False))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tok):
    """A policy directory, and a reward model trained 3 steps on a GPT backbone, saved."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("ranking")
    policy = save_model(root / "policy", tiny_gpt(tok.vocab_size, 0))
    tok.save(policy / "tokenizer.json")
    rm = RewardModel(tiny_gpt(tok.vocab_size, 1))
    rng = random.Random(0)
    pairs = [tokenize_pair(check_preference({"prompt": f"Rate {i}.", "chosen": "good " * rng.randint(1, 3),
                                             "rejected": "bad " * rng.randint(1, 3)}), tok, CHATML)
             for i in range(16)]
    optimizer = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    for step in range(3):
        loss_sum, count = reward_loss(rm, collate_pairs(pairs[step * 4:step * 4 + 8]))
        optimizer.zero_grad()
        (loss_sum / count).backward()
        optimizer.step()
    rm.eval()
    return policy, save_reward_model(root / "rm", rm, tok), rm


def forward(rm: RewardModel, ids: list[int]) -> float:
    with torch.no_grad():
        return float(rm(torch.tensor([ids]))[0])


def test_the_loaded_ranker_scores_exactly_what_reward_model_forward_gives(dirs, tok):
    policy, rm_dir, rm = dirs
    ranker = load_reward_ranker(rm_dir, tok, str(policy), CHATML)
    messages = [{"role": "user", "content": "Rate 3."}]
    for reply in ("good good", "bad", "x"):
        chat_ids = completion_example(tok, CHATML, messages, [{"role": "assistant", "content": reply}]).ids
        assert ranker.chat_reward(messages, reply) == forward(rm, chat_ids)
        assert ranker.text_reward("Rate 3.", reply) == forward(rm, scored_ids(tok, None, "Rate 3.", reply))
    # The two layouts are two sequences: a mix-up would show.
    assert ranker.chat_reward(messages, "good") != ranker.text_reward("Rate 3.", "good")
    # Batched right-padded rows (training's layout) agree with the one-row scores.
    ids, _, lengths = collate_pairs(
        [tokenize_pair(check_preference({"prompt": "Rate 3.", "chosen": "good good", "rejected": "x"}), tok, CHATML)])
    with torch.no_grad():
        batched = rm(ids, lengths).tolist()
    assert batched == pytest.approx([ranker.chat_reward(messages, "good good"), ranker.chat_reward(messages, "x")],
                                    abs=1e-5)
    # A reply that spells chat markup cannot be rendered: it ranks last.
    assert ranker.chat_reward(messages, "<|im_end|>") == float("-inf")


def test_the_reward_models_own_chat_template_wins_over_the_policys(dirs, tok, tmp_path):
    _, rm_dir, _ = dirs
    other = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    own = tmp_path / "rm"
    own.mkdir()
    for f in rm_dir.iterdir():
        (own / f.name).write_bytes(f.read_bytes())
    (own / "tokenizer_config.json").write_text(json.dumps({"chat_template": other}))
    assert load_reward_ranker(own, tok, "p", CHATML).template.source == other
    assert load_reward_ranker(rm_dir, tok, "p", CHATML).template is CHATML


def test_a_reward_model_with_another_tokenizer_is_refused_naming_both(dirs, tok, tmp_path, capsys):
    from lmstack.errors import ConfigError
    from lmstack.tokenizer import train_bpe

    policy, rm_dir, rm = dirs
    other_tok = train_bpe(["some other corpus entirely, " * 40], vocab_size=280, progress=False, workers=1)
    with pytest.raises(ConfigError, match=f"reward model {rm_dir} and the policy {policy} use different tokenizers"):
        load_reward_ranker(rm_dir, other_tok, str(policy))
    bare = save_model(tmp_path / "bare", rm.backbone)
    (bare / "reward_head.safetensors").write_bytes((rm_dir / "reward_head.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="has no tokenizer.json"):
        load_reward_ranker(bare, tok, str(policy))
    # through the CLI: one line naming both, exit status 2
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in rm_dir.iterdir():
        (mixed / f.name).write_bytes(f.read_bytes())
    other_tok.save(mixed / "tokenizer.json")
    assert main(["generate", "--model", str(policy), "--prompt", PROMPT, "--best-of", "2",
                 "--reward-model", str(mixed)]) == 2
    err = capsys.readouterr().err
    assert f"the reward model {mixed} and the policy {policy}" in err and len(err.splitlines()) == 1


def expected_output(samples, rewards) -> str:
    """What `lmstack generate --best-of N` prints for these samples, best reward first."""
    order = sorted(range(len(samples)), key=lambda j: rewards[j], reverse=True)
    return "".join(f"--- {i} ({len(samples[j].tokens)} tokens, finish_reason={samples[j].finish_reason}, "
                   f"reward {rewards[j]:.3f})\n{samples[j].text}\n" for i, j in enumerate(order))


def test_generate_best_of_ranks_the_samples_by_the_reward_model(dirs, tok, capsys):
    policy, rm_dir, rm = dirs
    engine = Engine.load(policy)
    settings, n = {"temperature": 1.0, "max_new_tokens": 6, "seed": 5}, 4
    # Sample j of a best-of call with seed s is the sample drawn alone with seed s + j.
    samples = [engine.generate(PROMPT, **{**settings, "seed": 5 + j}) for j in range(n)]
    rewards = [forward(rm, scored_ids(tok, None, PROMPT, s.text)) for s in samples]
    by_logprob = engine.generate(PROMPT, best_of=n, **settings)
    best = samples[rewards.index(max(rewards))]
    assert by_logprob.text != best.text  # the reward model's choice is not the log-probability's
    flags = ["generate", "--model", str(policy), "--prompt", PROMPT, "--temperature", "1", "--seed", "5",
             "--max-new-tokens", "6", "--best-of", str(n), "--reward-model", str(rm_dir)]
    capsys.readouterr()
    assert main(flags + ["--num-return-sequences", str(n)]) == 0
    assert capsys.readouterr().out == expected_output(samples, rewards)
    assert main(flags) == 0
    assert capsys.readouterr().out == expected_output([best], [max(rewards)])


def test_reward_model_without_best_of_is_refused(dirs, capsys):
    policy, rm_dir, _ = dirs
    assert main(["generate", "--model", str(policy), "--prompt", PROMPT, "--reward-model", str(rm_dir)]) == 2
    assert "--reward-model ranks the samples of best-of-N" in capsys.readouterr().err
    assert main(["chat", "--model", str(policy), "--reward-model", str(rm_dir)]) == 2


def test_chat_answers_with_the_most_rewarded_reply(dirs, tok):
    policy, rm_dir, rm = dirs
    engine = Engine.load(policy)
    ranker = load_reward_ranker(rm_dir, tok, str(policy), CHATML)
    settings = {"temperature": 1.0, "max_new_tokens": 6, "seed": 3}
    session = ChatSession(engine, CHATML, ranker=ranker, best_of=4, **settings)
    reply = "".join(session.ask("Rate 3."))
    cfg = {**settings, "stop_token_ids": session.turn_end}
    samples = [engine.generate(session.last_prompt, **{**cfg, "seed": 3 + j}).text for j in range(4)]
    messages = [{"role": "user", "content": "Rate 3."}]
    rewards = [forward(rm, completion_example(tok, CHATML, messages, [{"role": "assistant", "content": s}]).ids)
               for s in samples]
    assert len(set(rewards)) == 4 and reply == samples[rewards.index(max(rewards))]
    assert session.history[-1] == {"role": "assistant", "content": reply}
    # Without a reward model the same session ranks by mean log-probability (the engine's default).
    plain = ChatSession(engine, CHATML, best_of=4, **settings)
    assert "".join(plain.ask("Rate 3.")) == engine.generate(session.last_prompt, best_of=4, **cfg).text


def test_a_ranker_needs_no_directory(tok):
    """RewardRanker wraps an in-memory reward model too (what the server tests use)."""
    rm = RewardModel(tiny_gpt(tok.vocab_size, 2)).eval()
    ranker = RewardRanker(rm, tok, CHATML)
    assert ranker.scorer()("a", type("C", (), {"text": "b"})()) == forward(rm, scored_ids(tok, None, "a", "b"))
