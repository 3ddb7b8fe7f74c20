"""The reward of an RL run's rollouts: a Python reward (rewards.py) or a reward model.

    scorer = load_scorer(cfg, tok)                 # cfg.reward: exact_answer | regex | ... | DIR
    rewards, valid = scorer.score(records, messages, texts, report)          # (N,), (N,) bool

- A Python reward is `fn(record, completion_text)`, run through `rewards.safe_reward`: one that
  raises or returns NaN/inf/a non-number skips that sample (valid False), counted in the
  `RewardReport` with its reason, and the run goes on.
- A reward model (reward_model.py, `lmstack reward`'s OUT) scores each (prompt, completion)
  rendered as it was trained: the prompt's chat plus the completion as the assistant's reply,
  through the reward model's own chat template (preference.completion_example), cut to its
  context from the left (it reads the last token). A reply that spells a special token cannot
  be rendered and is skipped. It must share the policy's tokenizer (a ConfigError otherwise):
  its scores are of the same token sequences the policy writes.

`binary`: the reward is 0/1 (the Python rewards), so its mean is an accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmstack.errors import ConfigError, DataError
from lmstack.models.directory import load_tokenizer, model_chat_template
from lmstack.models.protocol import model_device
from lmstack.posttrain.preference import completion_example
from lmstack.posttrain.reward_model import RewardModel, load_reward_model
from lmstack.posttrain.rewards import RewardFn, RewardReport, make_reward, score_all
from lmstack.posttrain.rl_config import RLConfig, RLSettings
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.chat_template import ChatTemplate

Score = Callable[[Sequence[dict], Sequence[list[dict]], Sequence[str], RewardReport],
                 tuple[torch.Tensor, torch.Tensor]]


@dataclass
class RolloutScorer:
    """Rewards (N,) and valid (N,) of N completions: `score(records, messages, texts, report)`."""

    score: Score
    binary: bool  # 0/1 rewards: their mean is an accuracy
    name: str


def _schema(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"rl.schema={path}: cannot read a JSON Schema from it ({e})") from None


# reward name -> the options its factory (rewards.REWARDS) takes from the [rl] table
REWARD_OPTIONS: dict[str, Callable[[RLSettings], dict]] = {
    "regex": lambda s: {"pattern": s.pattern},
    "json_schema": lambda s: {"schema": _schema(s.schema)} if s.schema else {},
}


def function_scorer(fn: RewardFn, name: str) -> RolloutScorer:
    """A Python reward, each call guarded by safe_reward (rewards.score_all)."""
    def score(records, messages, texts, report):
        return score_all(fn, records, texts, report)
    return RolloutScorer(score, True, name)


@torch.no_grad()
def model_rewards(model: RewardModel, tok: Tokenizer, template: ChatTemplate,
                  messages: Sequence[list[dict]], texts: Sequence[str], report: RewardReport,
                  batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A reward model's scores of (prompt chat, reply) pairs; unrenderable replies skipped."""
    limit = model.backbone.config.block_size
    seqs: list[list[int] | None] = []
    for chat, text in zip(messages, texts):
        try:
            ids = completion_example(tok, template, chat, [{"role": "assistant", "content": text}]).ids
            seqs.append(ids[-limit:])
            report.scored += 1
        except DataError as e:  # the reply spells chat markup: it cannot be scored
            seqs.append(None)
            report.skip("unscorable", str(e)[:80])
    rewards = torch.zeros(len(seqs))
    device = model_device(model)
    kept = [i for i, s in enumerate(seqs) if s is not None]
    for start in range(0, len(kept), batch_size):
        rows = kept[start:start + batch_size]
        T = max(len(seqs[i]) for i in rows)
        ids = torch.tensor([seqs[i] + [0] * (T - len(seqs[i])) for i in rows], device=device)  # (b, T)
        lengths = torch.tensor([len(seqs[i]) for i in rows], device=device)                  # (b,)
        rewards[rows] = model(ids, lengths).float().cpu()
    valid = torch.tensor([s is not None for s in seqs], dtype=torch.bool)
    return rewards, valid


def reward_model_scorer(directory: str, policy: torch.nn.Module, tok: Tokenizer,
                        device: torch.device | str = "cpu") -> RolloutScorer:
    """A reward model directory as a scorer, after checking it reads the policy's tokens."""
    model = load_reward_model(directory, device=device)
    model.requires_grad_(False)
    pv, rv = policy.config.vocab_size, model.backbone.config.vocab_size
    rm_tok = load_tokenizer(directory)
    if pv != rv or (rm_tok is not None and rm_tok != tok):
        raise ConfigError(f"the reward model {directory} has another vocabulary ({rv} ids) or "
                          f"tokenizer than the policy ({pv} ids); a reward model must be trained "
                          "from the policy's own base (`lmstack reward --model` the SFT model)")
    template = model_chat_template(directory)

    def score(records, messages, texts, report):
        return model_rewards(model, tok, template, messages, texts, report)
    return RolloutScorer(score, False, f"reward model {directory}")


def load_scorer(cfg: RLConfig, policy: torch.nn.Module, tok: Tokenizer,
                device: torch.device | str = "cpu") -> RolloutScorer:
    """cfg.reward as a scorer: a registered Python reward with its [rl] options, or a model."""
    if cfg.reward_model:
        return reward_model_scorer(cfg.reward, policy, tok, device)
    options = REWARD_OPTIONS.get(cfg.reward, lambda s: {})(cfg.rl)
    return function_scorer(make_reward(cfg.reward, **options), cfg.reward)
