"""The rollout loader of an RL run: the trainer's batches are the policy's own scored samples.

The trainer (lmstack/train/loop.py) calls `next_batch()` once per micro-batch. Every
`epochs x grad_accum` calls the loader makes a new rollout batch (`RolloutMaker`):

1. the next `rl.prompts_per_step` prompts (rl_data.PromptLoader: seeded order, dealt by rank);
2. k samples of each through the engine (rollout.py: one shared prefill per prompt), seeded
   from (seed, rollout batch, rank), so a batch is reproducible;
3. rewards (rl_reward.py): a skipped one (the reward raised or returned NaN) takes its sample
   out of the loss mask, and is counted and printed;
4. once, before any update: old_logp (the policy now, the ratio's denominator, computed in the
   same precision as the loss), ref_logp (the reference: a frozen copy, or with LoRA the policy
   with its adapters off) and PPO's values;
5. advantages: GRPO's group_advantages (one per sample, on its tokens); PPO's GAE over the
   KL-penalized per-token rewards, whitened.

Then the same batch is handed out `epochs` times (several optimizer steps per rollout batch, the
point of the clipped ratio), split into grad_accum micro-batches. At epoch 0 the policy is the
one that produced old_logp, so the first ratio is exactly 1 (tested).

`state_dict` holds the prompt loader's position, the number of calls, the reward report and —
when a checkpoint falls mid-epochs — the pending rollout batch itself (its tensors): the
weights moved since it was sampled, so it could not be sampled again. `--resume` then continues
exactly as the run would have.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lmstack.models.protocol import IGNORE_INDEX
from lmstack.posttrain.reference import adapters_disabled
from lmstack.posttrain.rewards import RewardReport
from lmstack.posttrain.rl_config import RLConfig
from lmstack.posttrain.rl_data import PromptLoader, RLPrompt
from lmstack.posttrain.rl_math import (
    gae,
    group_advantages,
    kl_k3,
    kl_penalized_rewards,
    whiten,
)
from lmstack.posttrain.rl_objective import RLStats, language_model, policy_logprobs
from lmstack.posttrain.rl_reward import RolloutScorer
from lmstack.posttrain.rollout import Rollouts, sample_rollouts
from lmstack.train.objective import autocast


def rollout_seed(seed: int, index: int, rank: int) -> int:
    """The sampling seed of rollout batch `index` on `rank` (rows then draw from seed + row).

    >>> rollout_seed(0, 1, 0) == rollout_seed(0, 1, 0) != rollout_seed(0, 2, 0)
    True
    """
    return random.Random(f"rollouts:{seed}:{index}:{rank}").getrandbits(62)


@dataclass
class RolloutMaker:
    """Everything a rollout batch needs: the model, its reference, the reward, the settings."""

    model: nn.Module  # what trains (PPO: a PolicyValue)
    reference: nn.Module | None  # None: the policy with its adapters off (LoRA), or no reference
    use_reference: bool  # whether ref_logp is computed at all (beta > 0 or rl.reference_kl)
    scorer: RolloutScorer
    tok: Any
    settings: dict  # the engine's sampling settings, without the seed
    eos_ids: list[int] | None
    cfg: RLConfig
    device: torch.device
    stats: RLStats
    rank: int = 0
    verbose: bool = True
    chunk: int = 64  # rows per forward when scoring (bounds the (rows, T, V) logits)

    def __call__(self, prompts: list[RLPrompt], index: int) -> tuple[torch.Tensor, ...]:
        """The rollout batch `index` of these prompts, as the tuple ROLLOUT_FIELDS."""
        s, k = self.cfg.rl, self.cfg.rl.k
        settings = {**self.settings, "seed": rollout_seed(self.cfg.seed, index, self.rank)}
        r = sample_rollouts(language_model(self.model), self.tok, [p.ids for p in prompts], k,
                            settings, self.eos_ids)
        report = RewardReport()
        rewards, valid = self.scorer.score([p.record for p in prompts for _ in range(k)],
                                           [p.messages for p in prompts for _ in range(k)],
                                           r.texts, report)
        labels = r.labels.clone()
        labels[~valid] = IGNORE_INDEX  # a skipped sample leaves the loss (rl_math.grpo_loss)
        mask = labels != IGNORE_INDEX                              # (N, T)
        old_logp, old_values = self.score(self.model, r.input_ids, labels)
        ref_logp = self.reference_logprobs(r.input_ids, labels) if self.use_reference else old_logp
        if self.cfg.algo == "grpo":
            adv = group_advantages(rewards, k, scale_by_std=s.scale_by_std, valid=valid)  # (N,)
            advantages = adv[:, None] * mask                       # (N, T): on every sampled token
            returns = torch.zeros_like(old_logp)
        else:
            token_rewards = kl_penalized_rewards(rewards, old_logp, ref_logp, mask, s.beta, s.kl)
            advantages, returns = gae(token_rewards, old_values, mask, s.gamma, s.lam)  # (N, T)
            if s.whiten:
                advantages = whiten(advantages, mask)
        self.record(r, rewards, valid, mask, old_logp, ref_logp, report)
        return (r.input_ids, labels, advantages.float(), old_logp, ref_logp,
                torch.zeros_like(old_logp) if old_values is None else old_values, returns.float(),
                r.lengths)

    @torch.no_grad()
    def score(self, model: nn.Module, input_ids: torch.Tensor,
              labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log π (N, T), values (N, T) or None) of a model, in eval mode and the loss's precision."""
        was_training = model.training
        model.eval()
        logps, values = [], []
        try:
            for start in range(0, input_ids.size(0), self.chunk):
                ids = input_ids[start:start + self.chunk].to(self.device)
                lab = labels[start:start + self.chunk].to(self.device)
                with autocast(self.cfg, self.device):
                    logp, v = policy_logprobs(model, ids, lab)
                logps.append(logp.float().cpu())
                values.append(None if v is None else (v.float() * (lab != IGNORE_INDEX)).cpu())
        finally:
            model.train(was_training)
        return torch.cat(logps), None if values[0] is None else torch.cat(values)

    def reference_logprobs(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The reference's log π_ref (N, T): its own model, or the policy with adapters off."""
        if self.reference is not None:
            return self.score(self.reference, input_ids, labels)[0]
        lm = language_model(self.model)
        with adapters_disabled(lm):
            return self.score(lm, input_ids, labels)[0]

    def record(self, r: Rollouts, rewards: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor,
               old_logp: torch.Tensor, ref_logp: torch.Tensor, report: RewardReport) -> None:
        """The rollout batch's numbers for the log (RLStats), and a line when rewards were skipped."""
        got = rewards[valid]
        out = {"reward": float(got.mean()) if got.numel() else 0.0,
               "reward_std": float(got.std()) if got.numel() > 1 else 0.0,
               "skipped_rewards": report.skipped,
               "completion_tokens": float(r.completion_lengths.float().mean())}
        if self.scorer.binary:
            out["accuracy"] = float((got == 1).float().sum() / max(len(r), 1))
        if self.use_reference:
            n = max(int(mask.sum()), 1)
            out["kl"] = float((kl_k3(old_logp, ref_logp) * mask).sum() / n)
        self.stats.rollout = out
        if report.skipped and self.verbose:
            tqdm.write(f"{report.summary()}; skipped samples train nothing. First: "
                       f"{report.examples[0]}")


class RolloutLoader:
    """The trainer's loader of rollout batches (module docstring): next_batch, state_dict."""

    def __init__(self, prompts: PromptLoader, make: RolloutMaker, epochs: int, micro_batches: int) -> None:
        self.prompts, self.make = prompts, make
        self.epochs, self.micro_batches = epochs, micro_batches
        self.calls = 0  # next_batch calls so far
        self.pending: tuple[torch.Tensor, ...] | None = None

    @property
    def per_batch(self) -> int:
        """next_batch calls one rollout batch serves."""
        return self.epochs * self.micro_batches

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """The next micro-batch: of a fresh rollout batch every `per_batch` calls."""
        if self.calls % self.per_batch == 0 or self.pending is None:
            self.pending = self.make(self.prompts.next_batch(), self.calls // self.per_batch)
        m = self.calls % self.micro_batches
        self.calls += 1
        rows = self.pending[0].size(0) // self.micro_batches
        return tuple(t[m * rows:(m + 1) * rows] for t in self.pending)

    def epoch_batches(self):
        """Rollouts are sampled, not read: validation is the objective's `evaluate`."""
        return iter(())

    def state_dict(self) -> dict:
        """Where the loader is; the pending rollout batch too when it is not used up."""
        mid = self.calls % self.per_batch != 0
        return {"prompts": self.prompts.state_dict(), "calls": self.calls,
                "pending": list(self.pending) if mid and self.pending is not None else None,
                "rollout_stats": dict(self.make.stats.rollout)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's state."""
        self.prompts.load_state_dict(state["prompts"])
        self.calls = state["calls"]
        pending: Sequence[torch.Tensor] | None = state.get("pending")
        self.pending = tuple(pending) if pending is not None else None
        self.make.stats.rollout = dict(state.get("rollout_stats") or {})
