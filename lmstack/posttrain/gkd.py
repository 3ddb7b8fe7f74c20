"""GKD's batches: with probability lmbda the student's own answers to the batch's prompts, else the data's.

Generalized knowledge distillation (Agarwal et al. 2024, "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes", Algorithm 1): a student trained only on fixed
answers (the data's, or the teacher's) is scored at inference on prefixes it wrote itself,
which it never saw in training. GKD closes that gap: for a share `lmbda` of the batches the
student samples the answers (at temperature 1 in the paper), and the teacher then scores every
token of them, as it scores the data's answers in the other batches (distill_run.py's loss).

`OnPolicyLoader` wraps the SFT loader: it deals the same rows in the same order, and for an
on-policy batch takes each example's prompt (the tokens before its last answer) and replaces
the batch by the student's samples (rollout.py's `sample_rollouts`, through the inference
engine's decode step: rows of prompt + completion, right-padded, the completion and its stop id
trained). Which batches are on-policy, and the samples' seeds, follow from the run's seed and
the batch's number, so `--resume` continues exactly.

    loader = OnPolicyLoader(sft_loader, tok, template, eos_ids, cfg.distill, seed=0)
    loader.policy = student          # once the run is prepared
    batch = loader.next_batch()      # (input_ids, labels[, position_ids, segment_ids])
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

from lmstack.models.protocol import IGNORE_INDEX
from lmstack.posttrain.distill_config import DistillSettings
from lmstack.posttrain.rollout import sample_rollouts
from lmstack.posttrain.sft import SFTLoader
from lmstack.posttrain.sft_run import answer_settings
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.chat_template import ChatTemplate


def prompt_before_answer(ids: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """The inputs up to the last answer's first token: what the student answers from.

    labels[t] is the token after position t where it is trained (sft_data.py), so the last
    answer's first token is the label at the start s of the last run of trained labels, and
    the prompt is ids[:s + 1].

    >>> ids = torch.tensor([5, 6, 7, 8, 9, 10])                 # prompt 5 6, answer 7, turn 8 9, answer 10 ...
    >>> labels = torch.tensor([-100, 7, -100, -100, 10, 11])
    >>> prompt_before_answer(ids, labels)
    [5, 6, 7, 8, 9]
    """
    trained = (labels != IGNORE_INDEX).tolist()
    s = len(trained) - 1 - trained[::-1].index(True)  # the last trained position
    while s > 0 and trained[s - 1]:
        s -= 1
    return ids[:s + 1].tolist()


def batch_prompts(batch: tuple[torch.Tensor, ...]) -> list[list[int]]:
    """The prompt of every example of an SFT batch (packed rows hold several, by segment)."""
    input_ids, labels, _, segment_ids = batch
    prompts = []
    for ids, lab, seg in zip(input_ids, labels, segment_ids):
        for s in seg.unique().tolist():
            keep = seg == s  # (T,) this example's positions
            if s > 0 and bool((lab[keep] != IGNORE_INDEX).any()):
                prompts.append(prompt_before_answer(ids[keep], lab[keep]))
    return prompts


class OnPolicyLoader:
    """The SFT loader's batches, a seeded share `lmbda` of them replaced by the student's samples."""

    def __init__(self, data: SFTLoader, tok: Tokenizer, template: ChatTemplate,
                 eos_ids: list[int] | None, settings: DistillSettings, seed: int = 0,
                 rank: int = 0, max_len: int | None = None) -> None:
        self.data, self.tok, self.eos_ids = data, tok, eos_ids
        self.lmbda, self.seed, self.rank, self.max_len = settings.lmbda, seed, rank, max_len
        self.sampling = {**answer_settings(template, tok, settings.max_new_tokens),
                         "temperature": settings.student_temperature}
        self.policy: torch.nn.Module | None = None  # the student, set once the run is prepared
        self.drawn = 0  # batches dealt: the number of the next, its coin and its seed
        self.on_policy, self.batches = 0, 0  # since the last report

    def on_policy_at(self, n: int) -> bool:
        """Whether batch n is the student's (the same on every rank, so ranks wait alike)."""
        return random.Random(self.seed * 1_000_003 + n).random() < self.lmbda

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """The next batch: the data's, or (with probability lmbda) the student's answers."""
        batch, n = self.data.next_batch(), self.drawn
        self.drawn += 1
        self.batches += 1
        if not self.on_policy_at(n):
            return batch
        if self.policy is None:
            raise RuntimeError("OnPolicyLoader.policy is unset: the student samples the batch")
        self.on_policy += 1
        # rows r of the batch draw from seed + r (rollout.py); a CPU torch.Generator keeps
        # only a seed's low 32 bits, so each batch's seed is drawn within them
        seed = random.Random(f"gkd {self.seed} {n} {self.rank}").getrandbits(31)
        with torch.no_grad():
            r = sample_rollouts(self.policy, self.tok, batch_prompts(batch), 1,
                                {**self.sampling, "seed": seed}, self.eos_ids)
        # a sample may run past the teacher's context; what it cannot read is not trained
        return r.input_ids[:, :self.max_len], r.labels[:, :self.max_len]  # (N, T) each

    def epoch_batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """The data's batches in order (validation scores the data's answers)."""
        return self.data.epoch_batches()

    def report(self) -> dict:
        """The share of on-policy batches since the last call."""
        share = self.on_policy / self.batches if self.batches else 0.0
        self.on_policy, self.batches = 0, 0
        return {"on_policy": share}

    def state_dict(self) -> dict:
        """Where the loader is, for a checkpoint: the data's place and the batches dealt."""
        return {"data": self.data.state_dict(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's state."""
        self.data.load_state_dict(state["data"])
        self.drawn = state["drawn"]
