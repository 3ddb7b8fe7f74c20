"""Verifiable rewards (lmstack/posttrain/rewards.py): exact answers on the word problems, JSON-schema
validity, regex format, the registry's errors, and safe_reward/score_all turning a reward that
raises or returns NaN, inf or a non-number into a skipped, counted sample whose advantage is 0."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.data.word_problems import word_problems
from lmstack.errors import ConfigError
from lmstack.posttrain.rewards import (
    REWARDS,
    RewardReport,
    make_reward,
    safe_reward,
    score_all,
)
from lmstack.posttrain.rl_math import group_advantages


def test_exact_answer_on_word_problems():
    fn = make_reward("exact_answer")
    for rec in word_problems(5, "test"):
        answer = rec["messages"][-1]["content"]
        assert fn(rec, answer) == 1.0 and fn(rec, f" {answer}.") == 1.0
        assert fn(rec, str(int(answer) + 1)) == 0.0 and fn(rec, f"It is {answer}") == 0.0


def test_json_schema_reward_from_the_config_or_the_record():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fixed = make_reward("json_schema", schema=schema)
    assert [fixed(None, c) for c in ('{"n": 3}', '{"n": "3"}', "{}", "{not json")] == [1.0, 0.0, 0.0, 0.0]
    per_record = make_reward("json_schema")
    assert per_record({"schema": {"type": "array"}}, json.dumps([1, 2])) == 1.0
    assert per_record({"schema": {"type": "array"}}, "{}") == 0.0
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        make_reward("json_schema", schema={"type": "no-such-type"})


def test_regex_reward_full_and_search():
    assert make_reward("regex", pattern=r"\d+\.?")(None, "42.") == 1.0
    assert make_reward("regex", pattern=r"\d+")(None, "x 42") == 0.0
    assert make_reward("regex", pattern=r"\d+", full=False)(None, "x 42") == 1.0
    with pytest.raises(ConfigError, match="does not compile"):
        make_reward("regex", pattern="(")


def test_registry_refuses_unknown_names_and_options():
    assert sorted(REWARDS) == ["exact_answer", "json_schema", "regex"]
    with pytest.raises(ConfigError, match="unknown reward 'bleu'"):
        make_reward("bleu")
    with pytest.raises(ConfigError, match="does not take options"):
        make_reward("exact_answer", pattern="x")


def flaky(prompt, completion):
    """A user's reward with every failure there is."""
    return {"raise": lambda: 1 / 0, "nan": lambda: float("nan"), "inf": lambda: float("inf"),
            "str": lambda: "good", "tensor": lambda: torch.tensor(0.5), "ok": lambda: 1.0,
            "bool": lambda: False}[completion]()


def test_safe_reward_skips_and_reports_instead_of_crashing():
    report = RewardReport(keep_examples=2)
    got = [safe_reward(flaky, "q", c, report) for c in ("raise", "nan", "inf", "str", "tensor", "ok", "bool")]
    assert got == [None, None, None, None, 0.5, 1.0, 0.0]
    assert report.scored == 3 and report.skipped == 4
    assert report.reasons == {"raised": 1, "not finite": 2, "not a number": 1}
    assert report.examples == ["raised: ZeroDivisionError: division by zero", "not finite: returned nan"]
    assert report.summary() == "rewards: 3 scored, 4 skipped (not a number: 1, not finite: 2, raised: 1)"


def test_skipped_samples_get_no_advantage_and_do_not_move_their_group():
    completions = ["ok", "bool", "nan", "ok", "raise", "bool"]   # two prompts, k = 3
    report = RewardReport()
    rewards, valid = score_all(flaky, ["q"] * 6, completions, report)
    assert valid.tolist() == [True, True, False, True, False, True] and report.skipped == 2
    adv = group_advantages(rewards, k=3, valid=valid)
    assert adv[2] == 0 and adv[4] == 0
    # each group's advantages are those of its valid samples alone: [1, 0] -> ±0.7071
    want = group_advantages(torch.tensor([1.0, 0.0]), k=2)
    assert torch.allclose(adv[[0, 1]], want, atol=1e-6) and torch.allclose(adv[[3, 5]], want, atol=1e-6)
    with pytest.raises(ConfigError, match="3 prompts but 2 completions"):
        score_all(flaky, ["q"] * 3, ["ok", "ok"])
