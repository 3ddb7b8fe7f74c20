"""What the trainer minimizes, logs and validates on preference pairs, for any per-pair score.

A preference run (`lmstack reward`, `lmstack dpo`) scores a `collate_pairs` batch as a
`PreferenceOutput` (preference_loss.py): each pair's loss and the rewards of its chosen and
rejected reply — a reward model's r(x, y) under Bradley–Terry, DPO's implicit β log π/π_ref.
`pair_objective` turns that score into the loop's Objective (lmstack/train/objective.py):

- `loss_fn`: the losses summed over the batch's pairs; `count`: its pairs, so a step's loss is
  the mean over every pair of the step (all micro-batches and ranks);
- `report`: over the step's pairs, the mean chosen and rejected rewards, their margin
  (chosen − rejected) and the accuracy (how often the chosen reward is strictly the higher),
  which join the step's log.jsonl record;
- `evaluate`: the same on the held-out pairs, as val_loss, val_accuracy, val_margin,
  val_chosen_reward and val_rejected_reward (summed over ranks: the numbers do not depend on
  how many processes ran).

    objective = pair_objective(objective, reward_score, d)      # keep how checkpoints save

Run the tests: `pytest tests/posttrain/test_reward_run.py tests/posttrain/test_dpo_run.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lmstack.posttrain.preference_loss import PreferenceOutput
from lmstack.train import distributed
from lmstack.train.objective import Objective, autocast, to_device

PairScore = Callable[[nn.Module, Sequence[torch.Tensor]], PreferenceOutput]


def pair_count(batch: Sequence[torch.Tensor]) -> int:
    """What a preference step's loss is averaged over: the batch's pairs (half its rows).

    >>> pair_count((torch.zeros(6, 3),))
    3
    """
    return batch[0].size(0) // 2


class PairTally:
    """Sums over pairs of a PreferenceOutput's loss, rewards and wins, made into means.

    >>> t = PairTally()
    >>> t.add(PreferenceOutput(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])))
    >>> t.means(distributed.Dist())
    {'loss': 2.0, 'accuracy': 0.5, 'margin': 0.0, 'chosen_reward': 1.0, 'rejected_reward': 1.0}
    """

    NAMES = ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward")

    def __init__(self) -> None:
        self.sums = [0.0] * len(self.NAMES)
        self.pairs = 0

    def add(self, out: PreferenceOutput) -> None:
        """Count one batch's pairs."""
        c, r = out.chosen_rewards.detach().float(), out.rejected_rewards.detach().float()  # (B,)
        for i, value in enumerate((out.losses.detach().float(), (c > r).float(), c - r, c, r)):
            self.sums[i] += float(value.sum())
        self.pairs += c.numel()

    def means(self, d: distributed.Dist, prefix: str = "") -> dict[str, float]:
        """The means over every rank's pairs (a collective: every rank calls it); {} for none."""
        *sums, pairs = distributed.all_sum([*self.sums, self.pairs], d)
        if not pairs:
            return {}
        return {prefix + name: s / pairs for name, s in zip(self.NAMES, sums)}


class PairHooks:
    """The loop's hooks for a per-pair score: its loss, the step's report, the validation."""

    def __init__(self, score: PairScore, d: distributed.Dist) -> None:
        self.score, self.d, self.tally = score, d, PairTally()

    def loss_fn(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(loss summed over the batch's pairs, their count); a training forward is tallied."""
        out = self.score(model, batch)
        if model.training:  # the loop's eval-mode check of a checkpoint is no step's pairs
            self.tally.add(out)
        return out.losses.sum(), out.losses.size(0)

    def report(self) -> dict[str, float]:
        """The step's rewards, margin and accuracy (the loss is logged already); then reset."""
        means = self.tally.means(self.d)
        means.pop("loss", None)
        self.tally = PairTally()
        return means

    @torch.no_grad()
    def evaluate(self, run) -> dict[str, float]:
        """val_loss, val_accuracy, val_margin, val_*_reward over eval_batches held-out batches."""
        model, cfg, device = run.raw_model, run.cfg, run.d.device
        was_training = model.training
        model.eval()
        tally = PairTally()
        for i, batch in enumerate(run.val_loader.epoch_batches()):
            if i == cfg.eval_batches:
                break
            with autocast(cfg, device):
                tally.add(self.score(model, to_device(batch, device)))
        model.train(was_training)
        return tally.means(run.d, "val_")


def pair_objective(base: Objective, score: PairScore, d: distributed.Dist) -> Objective:
    """`base` (how the method's checkpoints hold the model) with the pair score's loss, pair
    count, report and validation."""
    hooks = PairHooks(score, d)
    return dataclasses.replace(base, loss_fn=hooks.loss_fn, count=pair_count,
                               report=hooks.report, evaluate=hooks.evaluate)
