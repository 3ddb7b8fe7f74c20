"""Log-probabilities of the completion tokens of a batch: per token, and summed and averaged per
sequence. Every preference and RL method scores sequences through these functions.

A batch row holds one whole sequence (prompt + completion, right-padded) in `input_ids`, and
`labels` in the trainer's shifted convention (sft_data.py): `labels[t]` is the token that
follows position t where that token is a completion token, else -100. So the model's logits
at position t score `labels[t]`, and prompt, padding and the last position count nothing.

    logps = sequence_logprobs(model(input_ids), labels)      # (N,) sums, counts, means
    pair = PairLogprobs.from_rows(logps)                       # rows [chosen..., rejected...]

The log-probability of a token is minus its cross-entropy (`next_token_loss`, the one
definition the trainer and the evaluator share), so DPO's log-probabilities and SFT's loss
can never disagree about a token. Rafailov et al. 2023 (DPO), Meng et al. 2024 (SimPO) and
Hong et al. 2024 (ORPO) differ only in whether they use the sum or the mean.

Run the tests: `pytest lmstack/posttrain/logprobs.py --doctest-modules tests/posttrain/test_preference_loss.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmstack.errors import ConfigError
from lmstack.models.protocol import IGNORE_INDEX, next_token_loss


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[t] | ...) at each position (B, T), float32 or wider; 0 where labels is -100.

    >>> uniform = torch.zeros(1, 3, 4)  # (B, T, V): every token has p = 1/4
    >>> token_logprobs(uniform, torch.tensor([[-100, 2, 3]])).tolist()  # doctest: +ELLIPSIS
    [[-0.0, -1.386..., -1.386...]]
    """
    if logits.shape[:-1] != labels.shape:
        raise ConfigError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not "
                          "line up: labels must be (B, T) for logits (B, T, vocab)")
    return -next_token_loss(logits, labels, reduction="none")  # cross-entropy ignores -100: 0 there


@dataclass(frozen=True)
class SequenceLogprobs:
    """Per sequence (N,): the summed log-probability of its completion tokens, and their count."""

    sum: torch.Tensor     # (N,) float
    count: torch.Tensor   # (N,) float: completion tokens per sequence

    @property
    def mean(self) -> torch.Tensor:
        """Length-normalized log-probability (N,); a sequence without tokens has mean 0."""
        return self.sum / self.count.clamp(min=1)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> SequenceLogprobs:
    """Sum and count of the completion log-probabilities of each row of a batch.

    >>> logits = torch.zeros(2, 3, 4)                          # p = 1/4 everywhere
    >>> s = sequence_logprobs(logits, torch.tensor([[-100, 1, 2], [-100, -100, 3]]))
    >>> [round(x, 4) for x in s.sum.tolist()], s.count.tolist(), [round(x, 4) for x in s.mean.tolist()]
    ([-2.7726, -1.3863], [2.0, 1.0], [-1.3863, -1.3863])
    """
    per_token = token_logprobs(logits, labels)             # (N, T), 0 off the completion
    count = (labels != IGNORE_INDEX).sum(-1).to(per_token.dtype)  # (N,)
    return SequenceLogprobs(per_token.sum(-1), count)


def model_logprobs(model: torch.nn.Module, input_ids: torch.Tensor,
                   labels: torch.Tensor) -> SequenceLogprobs:
    """Run `model` on right-padded rows and score their completions (no padding mask is needed:
    attention is causal, so padding after a sequence never reaches its tokens)."""
    return sequence_logprobs(model(input_ids), labels)  # logits (N, T, V)


@dataclass(frozen=True)
class PairLogprobs:
    """The log-probabilities of B preference pairs: chosen and rejected, (B,) each."""

    chosen: SequenceLogprobs
    rejected: SequenceLogprobs

    @classmethod
    def from_rows(cls, rows: SequenceLogprobs) -> PairLogprobs:
        """Split 2B rows laid out as [chosen_0..chosen_B-1, rejected_0..rejected_B-1].

        >>> s = SequenceLogprobs(torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.ones(4))
        >>> p = PairLogprobs.from_rows(s)
        >>> p.chosen.sum.tolist(), p.rejected.sum.tolist()
        ([-1.0, -2.0], [-3.0, -4.0])
        """
        n = rows.sum.size(0)
        if n % 2:
            raise ConfigError(f"a preference batch has an even number of rows (chosen then "
                              f"rejected), got {n}; collate it with preference.collate_pairs")
        half = n // 2
        return cls(SequenceLogprobs(rows.sum[:half], rows.count[:half]),
                   SequenceLogprobs(rows.sum[half:], rows.count[half:]))

    def detach(self) -> PairLogprobs:
        """The same numbers without a graph (a frozen reference's)."""
        return PairLogprobs(SequenceLogprobs(self.chosen.sum.detach(), self.chosen.count),
                            SequenceLogprobs(self.rejected.sum.detach(), self.rejected.count))


def pair_logprobs(model: torch.nn.Module, input_ids: torch.Tensor,
                  labels: torch.Tensor) -> PairLogprobs:
    """One forward over a collated preference batch (2B, T): chosen and rejected together, so
    both halves see the same weights, dropout draw aside."""
    return PairLogprobs.from_rows(model_logprobs(model, input_ids, labels))


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, input_ids: torch.Tensor,
                       labels: torch.Tensor) -> PairLogprobs:
    """The reference model's log-probabilities: no gradient, eval mode for the call."""
    was_training = model.training
    model.eval()  # a reference is a fixed function: no dropout
    try:
        return pair_logprobs(model, input_ids, labels)
    finally:
        model.train(was_training)
