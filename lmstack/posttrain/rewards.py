"""Rewards from Python functions: verifiable rewards for RL (GRPO's "rule-based" rewards).

A reward function takes the prompt's record and one sampled completion and returns a number:
`fn(prompt, completion) -> float` (a bool counts as 0/1). The record is the task's dict, e.g. a
word problem of lmstack/data/word_problems.py, whose last message holds the answer. Rewards are
built by name from `REWARDS` (a registry of factories), as a config names them:

    fn = make_reward("exact_answer")                       # 1.0 when the reply is the answer
    fn = make_reward("regex", pattern=r"^\\s*\\d+\\.?$")      # format: the reply is a number
    fn = make_reward("json_schema", schema={"type": "object", "required": ["name"]})

A reward written by a user can raise, or return NaN, inf or a string. `safe_reward` turns each
of those into a skipped sample (`None`, counted and explained in a `RewardReport`) instead of a
crash; `score_all` scores a rollout batch into rewards plus the `valid` mask that
lmstack/posttrain/rl_math.py's `group_advantages` takes, so a skipped sample gets no advantage.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmstack.data.word_problems import exact_match
from lmstack.errors import ConfigError

RewardFn = Callable[[Any, str], float]


def exact_answer_reward() -> RewardFn:
    """1.0 when the completion is the record's answer (word_problems.exact_match), else 0.0.

    >>> fn = exact_answer_reward()
    >>> rec = {"messages": [{"role": "user", "content": "2 plus 3?"}, {"role": "assistant", "content": "5"}]}
    >>> fn(rec, " 5."), fn(rec, "6")
    (1.0, 0.0)
    """
    return lambda prompt, completion: float(exact_match(completion, prompt))


def regex_reward(pattern: str, full: bool = True) -> RewardFn:
    """1.0 when the completion matches `pattern` (the whole of it, or anywhere with full=False).

    >>> fn = regex_reward(r"\\d+")
    >>> fn(None, "42"), fn(None, "42 apples"), regex_reward(r"\\d+", full=False)(None, "42 apples")
    (1.0, 0.0, 1.0)
    """
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ConfigError(f"the regex reward's pattern {pattern!r} does not compile: {e}") from None
    match = compiled.fullmatch if full else compiled.search
    return lambda prompt, completion: float(match(completion) is not None)


def _validator(schema: dict):
    """A jsonschema validator of `schema`; jsonschema is optional, so say how to get it."""
    try:
        import jsonschema
    except ImportError:
        raise ConfigError("the json_schema reward validates with the `jsonschema` package, which "
                          "is not installed: pip install jsonschema") from None
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ConfigError(f"the json_schema reward's schema is not a valid JSON Schema: "
                          f"{e.message}") from None
    return cls(schema)


def json_schema_reward(schema: dict | None = None) -> RewardFn:
    """1.0 when the completion parses as JSON valid under `schema` (or the record's "schema").

    >>> fn = json_schema_reward({"type": "object", "required": ["a"]})
    >>> fn(None, '{"a": 1}'), fn(None, '{"b": 1}'), fn(None, "not json")
    (1.0, 0.0, 0.0)
    """
    fixed = None if schema is None else _validator(schema)

    def fn(prompt: Any, completion: str) -> float:
        validator = fixed or _validator(prompt["schema"])
        try:
            value = json.loads(completion)
        except json.JSONDecodeError:
            return 0.0  # not JSON at all: the sample failed the task, it is not a broken reward
        return float(validator.is_valid(value))

    return fn


REWARDS: dict[str, Callable[..., RewardFn]] = {
    "exact_answer": exact_answer_reward,
    "regex": regex_reward,
    "json_schema": json_schema_reward,
}


def make_reward(name: str, **options: Any) -> RewardFn:
    """The reward function `name` of REWARDS, built with its options."""
    if name not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}")
    try:
        return REWARDS[name](**options)
    except TypeError as e:
        raise ConfigError(f"reward {name!r} does not take options {sorted(options)}: {e}") from None


@dataclass
class RewardReport:
    """What a batch's scoring skipped and why: counts by reason and a few examples."""

    scored: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    keep_examples: int = 5

    def skip(self, reason: str, detail: str) -> None:
        """Count one skipped sample under `reason`, keeping the first few details."""
        self.skipped += 1
        self.reasons[reason] += 1
        if len(self.examples) < self.keep_examples:
            self.examples.append(f"{reason}: {detail}")

    def summary(self) -> str:
        """One line for the run's log, e.g. 'rewards: 14 scored, 2 skipped (raised: 2)'."""
        why = ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items()))
        return f"rewards: {self.scored} scored, {self.skipped} skipped" + (f" ({why})" if why else "")


def safe_reward(fn: RewardFn, prompt: Any, completion: str,
                report: RewardReport | None = None) -> float | None:
    """fn(prompt, completion) as a finite float, or None (a skipped sample, counted in `report`).

    >>> report = RewardReport()
    >>> safe_reward(lambda p, c: 1 / 0, "q", "a", report), safe_reward(lambda p, c: float("nan"), "q", "a", report)
    (None, None)
    >>> safe_reward(lambda p, c: True, "q", "a", report), report.summary()
    (1.0, 'rewards: 1 scored, 2 skipped (not finite: 1, raised: 1)')
    """
    report = report if report is not None else RewardReport()
    try:
        value = fn(prompt, completion)
    except Exception as e:  # noqa: BLE001 - a user's reward may fail any way; the run goes on
        report.skip("raised", f"{type(e).__name__}: {e}")
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, (int, float)):  # bool is an int
        report.skip("not a number", f"returned {type(value).__name__} {value!r:.60}")
        return None
    if not math.isfinite(value):
        report.skip("not finite", f"returned {value}")
        return None
    report.scored += 1
    return float(value)


def score_all(fn: RewardFn, prompts: Sequence[Any], completions: Sequence[str],
              report: RewardReport | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (N,) float32 with 0 where skipped, valid (N,) bool) of N (prompt, completion) pairs.

    >>> r, ok = score_all(lambda p, c: len(c) / 0 if c == "x" else len(c), ["q"] * 3, ["ab", "x", ""])
    >>> r, ok
    (tensor([2., 0., 0.]), tensor([ True, False,  True]))
    """
    if len(prompts) != len(completions):
        raise ConfigError(f"{len(prompts)} prompts but {len(completions)} completions to score; "
                          "repeat each prompt once per sample (k times for GRPO)")
    values = [safe_reward(fn, p, c, report) for p, c in zip(prompts, completions)]
    valid = torch.tensor([v is not None for v in values], dtype=torch.bool)
    return torch.tensor([0.0 if v is None else v for v in values], dtype=torch.float32), valid
