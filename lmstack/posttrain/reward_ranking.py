"""Best-of-N ranked by a reward model, for the engine's callers: `lmstack generate` and `chat`
(`--best-of N --reward-model DIR`), `lmstack serve --reward-model DIR` and benchmarks/best_of_n.py.

Best-of-N (rejection sampling as in Nakano et al. 2021, WebGPT; Stiennon et al. 2020) draws N
samples and keeps the one a reward model rates highest; without a reward model the engine keeps
the highest mean log-probability. A `RewardRanker` is a reward model directory
(reward_model.py: the backbone + reward_head.safetensors) loaded next to the policy, checked to
share the policy's tokenizer, that scores a reply the way its training data was laid out
(preference.py):

- a chat (`chat_reward(messages, reply)`, what `chat` and /v1/chat/completions rank): the
  conversation with the reply as the assistant's turn, rendered by the reward model's chat
  template (the one its directory records, else the policy's);
- plain text (`text_reward(prompt, reply)`, what `generate` and /v1/completions rank): prompt
  + reply + end of text, as string pairs are laid out without a template.

A reply that cannot be rendered (it spells a special token) scores -inf and ranks last.

    ranker = load_reward_ranker("runs/rm", engine.tokenizer, "runs/sft", template)
    best = engine.generate(prompt_ids, best_of=16, temperature=1.0, scorer=ranker.scorer(messages))

Run the tests: `pytest tests/posttrain/test_reward_ranking.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lmstack.errors import ConfigError, DataError
from lmstack.infer.step import Completion
from lmstack.models.directory import load_tokenizer, model_chat_config
from lmstack.models.protocol import model_device
from lmstack.posttrain.preference import completion_example
from lmstack.posttrain.reward_model import RewardModel, load_reward_model, scored_ids
from lmstack.tokenizer.chat_template import ChatTemplate

Scorer = Callable[[str, Completion], float]


@dataclass
class RewardRanker:
    """A reward model, its tokenizer and chat template: rewards of (prompt, reply) pairs."""

    model: RewardModel
    tokenizer: Any
    template: ChatTemplate
    directory: str = "the reward model"

    @torch.no_grad()
    def reward(self, ids: list[int]) -> float:
        """RewardModel.forward of one sequence (past the context: its last block_size ids)."""
        ids = ids[-self.model.backbone.config.block_size:]
        return float(self.model(torch.tensor([ids], device=model_device(self.model)))[0])  # (1,) -> float

    def text_reward(self, prompt: str, reply: str) -> float:
        """The reward of prompt + reply + end of text (-inf if it cannot be encoded)."""
        try:
            return self.reward(scored_ids(self.tokenizer, None, prompt, reply))
        except DataError:
            return float("-inf")

    def chat_reward(self, messages: list[dict], reply: str) -> float:
        """The reward of the conversation `messages` answered by `reply`, rendered as a chat
        (-inf if the reply spells chat markup)."""
        try:
            ids = completion_example(self.tokenizer, self.template, list(messages),
                                     [{"role": "assistant", "content": reply}]).ids
        except DataError:
            return float("-inf")
        return self.reward(ids)

    def scorer(self, messages: list[dict] | None = None) -> Scorer:
        """Engine.generate's `scorer`: the chat reward of replies to `messages`, or (None) the
        plain-text reward of the engine's prompt text + each reply."""
        if messages is None:
            return lambda prompt, completion: self.text_reward(prompt, completion.text)
        return lambda _prompt, completion: self.chat_reward(messages, completion.text)


def check_same_tokenizer(policy: Any, reward: Any, policy_name: str, reward_name: str) -> None:
    """ConfigError, naming both models, unless the two tokenizers encode alike (same fingerprint:
    every id, merge and special token)."""
    def describe(tok: Any) -> str:
        return f"{tok.vocab_size} tokens, fingerprint {getattr(tok, 'fingerprint', '?')}"

    same = (policy.fingerprint == reward.fingerprint if hasattr(policy, "fingerprint")
            and hasattr(reward, "fingerprint") else policy == reward)
    if not same:
        raise ConfigError(f"the reward model {reward_name} and the policy {policy_name} use different "
                          f"tokenizers ({describe(reward)} vs {describe(policy)}); a reward model "
                          "ranks the policy's samples only when it was trained from the policy's "
                          "model, with its tokenizer: pass the reward model trained on this policy")


def load_reward_ranker(directory: str | os.PathLike, policy_tokenizer: Any = None,
                       policy_name: str = "the policy", template: ChatTemplate | None = None,
                       device: str | torch.device = "cpu") -> RewardRanker:
    """A reward model directory loaded for ranking the samples of the policy whose tokenizer is
    `policy_tokenizer` (checked: the same tokenizer, or a ConfigError naming both). `template`:
    the policy's chat template, used when the reward model's directory records none."""
    name = str(directory)
    model = load_reward_model(directory, device=device)
    tokenizer = load_tokenizer(directory)
    if tokenizer is None:
        raise ConfigError(f"the reward model {name} has no tokenizer.json, so its tokenizer cannot "
                          f"be checked against the policy {policy_name}'s; copy the tokenizer it "
                          "was trained with into that directory")
    if policy_tokenizer is not None:
        check_same_tokenizer(policy_tokenizer, tokenizer, policy_name, name)
    config = model_chat_config(directory)
    own = ChatTemplate.from_config(config) if config.get("chat_template") else None
    return RewardRanker(model, tokenizer, own or template or ChatTemplate(), name)
