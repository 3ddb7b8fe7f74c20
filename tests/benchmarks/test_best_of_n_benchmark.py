"""benchmarks/best_of_n.py wired on tiny models: a "dice" policy whose every reply is one digit
drawn from one fixed distribution (so about a third of the samples are right), and a random
reward model. No accuracy is asserted of the reward model; what is asserted is that each column
is what it says, computed from the very samples drawn: the oracle is the share of prompts with
at least one right candidate among the first N, random the mean share of right candidates, the
reward model's column the correctness of its most rewarded candidate."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model
from lmstack.posttrain.preference import completion_example
from lmstack.posttrain.reward_model import RewardModel, save_reward_model
from lmstack.posttrain.sft_data import tokenize_record
from lmstack.tokenizer.chat_template import ChatTemplate
from tests.benchmarks import load

ANSWERS = ["1", "2", "3"]


def dice_policy(tok) -> GPT:
    """Logits that never depend on the input: the final norm's output is its bias alone, and the
    head puts a large logit on the three digits (all other ids share about 1e-4)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32,
                          norm="layernorm", bias=True, tie_embeddings=False))
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        for a in ANSWERS:
            (digit,) = tok.encode_ordinary(a)
            model.lm_head.weight[digit] = 16.0 / 32
    return model


@pytest.fixture(scope="module")
def bench():
    return load("best_of_n")


@pytest.fixture(scope="module")
def result(bench, tok, tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("bon")
    policy = save_model(root / "policy", dice_policy(tok))
    tok.save(policy / "tokenizer.json")
    torch.manual_seed(1)
    backbone = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32))
    reward_dir = save_reward_model(root / "rm", RewardModel(backbone).eval(), tok)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Roll {i}.", "answer": ANSWERS[i % 3]}) + "\n" for i in range(8)))
    argv = ["--policy", str(policy), "--reward-model", str(reward_dir), "--data", str(data),
            "--n", "1", "2", "4", "--max-new-tokens", "1", "--seed", "3"]
    return bench.run(bench.parse_args(argv)), argv


def test_each_column_is_computed_from_the_same_samples(result, bench):
    out, _ = result
    right, rewards, replies = out["right"], out["rewards"], out["replies"]
    assert len(right) == 8 and all(len(r) == 4 for r in right)
    assert right == [[r.strip() == ANSWERS[p % 3] for r in rs] for p, rs in enumerate(replies)]
    rows = {r["n"]: r for r in out["rows"]}
    for n, row in rows.items():
        assert row["oracle"] == sum(any(r[:n]) for r in right) / 8
        assert row["random"] == pytest.approx(sum(sum(r[:n]) / n for r in right) / 8)
        picks = [max(range(n), key=lambda j: (rw[j], -j)) for rw in rewards]
        assert row["reward_model"] == sum(r[j] for r, j in zip(right, picks)) / 8
        assert row["oracle"] >= max(row["reward_model"], row["random"])
    assert rows[1]["reward_model"] == rows[1]["random"] == rows[1]["oracle"]
    # the dice make the task neither hopeless nor trivial, and more candidates help the oracle
    assert 0 < rows[1]["oracle"] < rows[4]["oracle"] and rows[4]["random"] < rows[4]["oracle"]


def test_samples_are_drawn_in_order_and_scored_by_the_reward_model(result, bench, tok):
    out, argv = result
    args = bench.parse_args(argv)
    engine, template = Engine.load(args.policy), ChatTemplate()
    stop = template.stop_tokens(tok)
    for p in (0, 1):  # sample j of prompt p from seed + 4p + j, as drawn
        messages = [{"role": "user", "content": f"Roll {p}."}]
        prompt = tokenize_record({"messages": messages + [{"role": "assistant", "content": "1"}]}, tok,
                                 template).prompt_ids()
        alone = [engine.generate(prompt, temperature=1.0, max_new_tokens=1, seed=3 + 4 * p + j,
                                 stop_token_ids=stop).text for j in range(4)]
        assert out["replies"][p] == alone
    assert out["replies"][0] != out["replies"][1]  # the dice are the same; their draws are not
    from lmstack.posttrain.reward_model import load_reward_model

    rm = load_reward_model(args.reward_model)
    with torch.no_grad():
        r = float(rm(torch.tensor([completion_example(tok, template, messages,
                                                      [{"role": "assistant", "content": alone[1]}]).ids]))[0])
    assert out["rewards"][1][1] == r  # prompt 1, sample 1


def test_the_table_and_json_print(result, bench, capsys):
    out, argv = result
    assert bench.table(out).count("\n") == 2 + 3 - 1
    bench.main(argv + ["--json"])
    assert json.loads(capsys.readouterr().out)["rows"] == out["rows"]
