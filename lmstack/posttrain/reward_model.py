"""A reward model: the language model with a scalar head on its last token, trained on
preference pairs with the Bradley–Terry loss, and a scorer that plugs it into best-of-N.

The backbone's last hidden state (`GPT.hidden`: the final norm's output, what `lm_head` reads)
at each sequence's last real token goes through one linear layer to a scalar r(x, y). Bradley
and Terry 1952 model P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)); the loss is its negative log,
−log σ(r_w − r_l), as in InstructGPT (Ouyang et al. 2022) and trl's RewardTrainer. Only reward
differences are learned: a constant added to every reward changes nothing.

A reward model is a model directory: the backbone as any model directory holds it
(config.json, model.safetensors) plus `reward_head.safetensors` (the head's weight and bias).

    rm = RewardModel(load_model("runs/sft"))
    loss_sum, pairs = reward_loss(rm, collate_pairs(batch_of_pairs))   # the trainer's loss_fn
    save_reward_model("runs/rm", rm, tokenizer)
    engine.generate(prompt, best_of=16, temperature=1.0, scorer=reward_scorer(rm, tok, template))

Run the tests: `pytest lmstack/posttrain/reward_model.py --doctest-modules tests/posttrain/test_reward_model.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmstack.atomic import atomic_open
from lmstack.errors import ConfigError, DataError
from lmstack.infer.step import Completion
from lmstack.models.directory import load_model, save_model
from lmstack.models.protocol import model_device
from lmstack.posttrain.preference import (
    PreferencePair,
    collate_pairs,
    completion_example,
)
from lmstack.posttrain.sft_data import tokenize_record
from lmstack.tokenizer.chat_template import ChatTemplate

REWARD_HEAD = "reward_head.safetensors"


class RewardModel(nn.Module):
    """r(x, y): a backbone LM's last hidden state at the last real token -> one scalar."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(backbone, "hidden", None)):
            raise ConfigError(f"a reward model reads the backbone's hidden states, and "
                              f"{type(backbone).__name__} has no `hidden` method; use a "
                              "transformer (GPT) backbone")
        self.backbone = backbone
        width = backbone.config.n_embd
        self.head = nn.Linear(width, 1)
        # Small and centered: rewards start near 0, so the first steps' loss is near log 2.
        nn.init.normal_(self.head.weight, std=1 / (width + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        """The backbone's architecture: what the trainer's clock and checkpoints read."""
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards (B,) of right-padded rows (B, T); row b's last real token is lengths[b] − 1."""
        h = self.backbone.hidden(input_ids, lengths=lengths, last_only=True)  # (B, 1, C)
        return self.head(h)[:, 0, 0].float()  # (B,)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per pair (B,): −log σ(r_w − r_l − margin) (Bradley & Terry 1952; margin: Llama 2).

    >>> bradley_terry_loss(torch.zeros(2), torch.zeros(2)).tolist()  # doctest: +ELLIPSIS
    [0.693..., 0.693...]
    >>> round(float(bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0]))), 4)  # −log σ(1)
    0.3133
    """
    return -F.logsigmoid(chosen - rejected - margin)


def reward_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """The fraction of pairs whose chosen reply gets the strictly higher reward.

    >>> reward_accuracy(torch.tensor([1.0, 0.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.0, 1.0]))  # a tie is wrong
    0.5
    """
    return float((chosen > rejected).float().mean())


def pair_rewards(model: RewardModel, input_ids: torch.Tensor,
                 lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards (B,) of a collated batch of 2B rows, chosen first."""
    rewards = model(input_ids, lengths)  # (2B,)
    half = rewards.size(0) // 2
    return rewards[:half], rewards[half:]


def reward_loss(model: RewardModel, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The trainer's loss_fn: (Bradley–Terry loss summed over the pairs, their count) of a
    `collate_pairs` batch (input_ids, labels, lengths); the labels are not used."""
    input_ids, _, lengths = batch[:3]
    chosen, rejected = pair_rewards(model, input_ids, lengths)
    return bradley_terry_loss(chosen, rejected).sum(), chosen.size(0)


@torch.no_grad()
def evaluate_rewards(model: RewardModel, pairs: Sequence[PreferencePair], batch_size: int = 16,
                     pad_id: int = 0) -> dict[str, float]:
    """Loss, accuracy and mean margin on held-out pairs (eval mode, in batches)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        ids, _, lengths = collate_pairs(pairs[start:start + batch_size], pad_id)
        c, r = pair_rewards(model, ids.to(device), lengths.to(device))
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {"loss": float(bradley_terry_loss(c, r).mean()), "accuracy": reward_accuracy(c, r),
            "margin": float((c - r).mean()), "pairs": len(pairs)}


# ---- the model directory -----------------------------------------------------------------

def save_reward_model(directory: str | os.PathLike, model: RewardModel,
                      tokenizer: Any = None) -> Path:
    """The backbone as a model directory, plus reward_head.safetensors (and tokenizer.json)."""
    d = save_model(directory, model.backbone)
    head = {"weight": model.head.weight.detach().cpu().contiguous(),
            "bias": model.head.bias.detach().cpu().contiguous()}
    with atomic_open(d / REWARD_HEAD) as f:
        save_file(head, f.name, metadata={"format": "lmstack-reward-head"})
    if tokenizer is not None:
        tokenizer.save(d / "tokenizer.json")
    return d


def load_reward_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> RewardModel:
    """A reward model directory back as a RewardModel (eval mode)."""
    path = Path(directory) / REWARD_HEAD
    if not path.is_file():
        raise ConfigError(f"{directory} has no {REWARD_HEAD}: it is a language model, not a reward "
                          "model; train one on preference pairs (reward_model.reward_loss) first")
    model = RewardModel(load_model(directory, device=device))
    try:
        head = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path} cannot be read as safetensors ({e}); the file is corrupt") from None
    want = {"weight": tuple(model.head.weight.shape), "bias": tuple(model.head.bias.shape)}
    got = {k: tuple(v.shape) for k, v in head.items()}
    if got != want:
        raise ConfigError(f"{path} holds {got}, but this backbone's head needs {want}; the head "
                          "belongs to another model")
    model.head.load_state_dict(head)
    return model.to(device).eval()


# ---- best-of-N -----------------------------------------------------------------------------

def scored_ids(tokenizer: Any, template: ChatTemplate | None, prompt: str, reply: str) -> list[int]:
    """The ids a reward model scores for (prompt, reply), made exactly as training made them
    (preference.py): with a template the user's prompt and the assistant's reply rendered as a
    chat, else prompt + reply + eos."""
    if template is None:
        return tokenize_record({"prompt": prompt, "completion": reply}, tokenizer, None).ids
    return completion_example(tokenizer, template, [{"role": "user", "content": prompt}],
                              [{"role": "assistant", "content": reply}]).ids


def reward_scorer(model: RewardModel, tokenizer: Any,
                  template: ChatTemplate | None = None) -> Callable[[str, Completion], float]:
    """The engine's best-of-N `scorer(prompt_text, completion) -> float` from a reward model.

    With a template, the engine's prompt must be the user's message as written (not already
    rendered); the reward is of that chat with the sampled reply. Without one, of prompt +
    reply + eos. A reply that cannot be rendered (it spells a special token) scores -inf. A sequence past the model's context keeps its last block_size tokens: the
    reward reads the last one."""
    device = model_device(model)
    limit = model.backbone.config.block_size

    @torch.no_grad()
    def scorer(prompt_text: str, completion: Completion) -> float:
        try:
            ids = scored_ids(tokenizer, template, prompt_text, completion.text)[-limit:]
        except DataError:
            return float("-inf")  # a reply that spells chat markup cannot be scored: rank it last
        was_training = model.training
        model.eval()
        reward = model(torch.tensor([ids], device=device))  # (1,)
        model.train(was_training)
        return float(reward[0])

    return scorer
