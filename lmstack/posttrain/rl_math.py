"""The arithmetic of RL fine-tuning: GRPO's group advantages, PPO's GAE, clipped losses, KL penalties.

Pure tensor functions, no model and no loop; the trainer (lmstack/train/loop.py) calls a
loss_fn(model, batch) -> (summed loss, count) built from them. Layouts: a rollout batch is B
sequences of T tokens; `logp`, `old_logp`, `ref_logp`, `values`, `rewards` and `mask` are (B, T),
aligned with the completion's tokens (mask 1 where a token was sampled, 0 on prompt and padding).

- GRPO (Shao et al. 2024, "DeepSeekMath", §4.1): k completions per prompt, advantage of each =
  (reward - group mean) / (group std + eps), the same for all its tokens; a group whose rewards
  are all equal teaches nothing and gets zero advantages. No value model.
- The clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"):
  ratio = exp(logp - old_logp), loss = -min(ratio·A, clip(ratio, 1-ε, 1+ε)·A).
- The KL to a reference, estimated from the sampled tokens (Schulman 2020, "Approximating KL
  Divergence"): k1 = log r, k2 = (log r)²/2, k3 = (r - 1) - log r with r = π_ref/π — k3 is
  unbiased, never negative and low-variance; GRPO uses it, with β = 0 allowed (and common since
  DAPO, Yu et al. 2025).
- PPO-RLHF (Ouyang et al. 2022, "InstructGPT"; Ziegler et al. 2019): per-token reward
  -β·KL_t, plus the reward model's score on the last token; GAE (Schulman et al. 2016, γ, λ);
  the clipped value loss; whitening.

Averaging (`average=`): "token" (the default) divides the step's summed token losses by its
token count — DAPO's token-level loss (Yu et al. 2025, §3.3), which is what the trainer's
(sum, count) division does anyway. GRPO's paper averages each sequence over its own length
first ("sequence"), so a token of a long completion weighs less than one of a short one: long
wrong answers are punished less per token, a length bias Dr. GRPO (Liu et al. 2025, "Understanding
R1-Zero-Like Training", §3.1) points out together with the std normalization's difficulty
bias; "constant" is Dr. GRPO's fix (sum over tokens, divided by a fixed budget per sequence),
and `scale_by_std=False` its advantage.

    adv = group_advantages(rewards, k=8)                               # (B,) with B = prompts·k
    loss, n = grpo_loss(logp, old_logp, adv, mask, ref_logp=ref, beta=0.04)
    adv, ret = gae(rewards_bt, values, mask, gamma=1.0, lam=0.95)      # PPO
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmstack.errors import ConfigError
from lmstack.models.protocol import IGNORE_INDEX
from lmstack.posttrain.distill_loss import batch_logits, reverse_kl


def group_advantages(rewards: torch.Tensor, k: int, eps: float = 1e-6, scale_by_std: bool = True,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """GRPO's advantages (B,) for rewards (B,) laid out as B/k groups of k samples of one prompt.

    `valid` (B,) bool drops samples (a reward that failed): they get 0 and do not count in
    their group's mean and std. A group with under 2 valid samples, or all rewards equal, gets 0.

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), k=3).round(decimals=3)
    tensor([ 1.1550, -0.5770, -0.5770,  0.0000,  0.0000,  0.0000])
    """
    if k < 1 or rewards.numel() % k:
        raise ConfigError(f"{rewards.numel()} rewards do not split into groups of k={k} samples")
    r = rewards.double().view(-1, k)  # (G, k)
    ok = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.view(-1, k).bool()
    r = torch.where(ok, r, 0.0)  # a NaN reward must not leak into its group's sums
    n = ok.sum(1, keepdim=True)  # (G, 1)
    mean = r.sum(1, keepdim=True) / n.clamp(min=1)  # (G, 1)
    sq = (torch.where(ok, r - mean, 0.0) ** 2).sum(1, keepdim=True)  # (G, 1)
    std = (sq / (n - 1).clamp(min=1)).sqrt()  # Bessel-corrected, as torch.std and TRL's GRPO
    adv = (r - mean) / (std + eps) if scale_by_std else r - mean  # (G, k)
    hi = torch.where(ok, r, -torch.inf).max(1, keepdim=True).values  # (G, 1)
    lo = torch.where(ok, r, torch.inf).min(1, keepdim=True).values  # (G, 1)
    teaches = (hi > lo) & (n >= 2)  # (G, 1): a tied group gives rounding noise / eps otherwise
    return torch.where(ok & teaches, adv, 0.0).view(-1).to(rewards.dtype)


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π - log π_ref: unbiased for KL(π ‖ π_ref), can be negative."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (log π - log π_ref)² / 2: biased, low variance, never negative."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = π_ref/π - 1 - log(π_ref/π): unbiased, never negative (GRPO's KL term).

    >>> kl_k3(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0]))
    tensor([0.0000, 0.7183])
    """
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3,
}


def kl_estimator(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The KL estimator `name` of KL_ESTIMATORS (k1, k2 or k3)."""
    if name not in KL_ESTIMATORS:
        raise ConfigError(f"unknown KL estimator {name!r}; choose one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[name]


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip_eps: float = 0.2, clip_eps_high: float | None = None) -> torch.Tensor:
    """PPO's per-token policy loss -min(r·A, clip(r, 1-ε, 1+ε_high)·A), r = exp(logp - old_logp).

    `advantages` is (B, T), or (B,) for one advantage per sequence (GRPO). ε_high defaults to ε
    (DAPO's "clip-higher" raises it). Outside the clip range, on the side the advantage pushes
    towards, the loss is constant: its gradient is zero.

    >>> clipped_surrogate(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2), torch.tensor([1.0]))
    tensor([[-1.2000, -0.5000]])
    """
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)  # (B, 1): a sequence's advantage on each token
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logp - old_logp.detach())  # (B, T)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + hi)  # (B, T)
    return -torch.minimum(ratio * advantages, clipped * advantages)


def reduce_loss(per_token: torch.Tensor, mask: torch.Tensor, average: str = "token",
                max_tokens: int | None = None) -> tuple[torch.Tensor, int]:
    """(sum, count) of (B, T) token losses for the trainer, which divides the one by the other.

    "token": Σ losses, count = tokens (DAPO); "sequence": Σ of each row's mean, count = rows
    (GRPO's paper); "constant": Σ losses / max_tokens, count = rows (Dr. GRPO).

    >>> x, m = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> [(float(s), n) for s, n in (reduce_loss(x, m, a, 3) for a in ("token", "sequence", "constant"))]
    [(7.0, 4), (5.0, 2), (2.3333332538604736, 2)]
    """
    m = mask.to(per_token.dtype)  # (B, T)
    rows = int((m.sum(-1) > 0).sum())
    if average == "token":
        return (per_token * m).sum(), int(m.sum())
    if average == "sequence":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).sum(), rows
    if average == "constant":
        if not max_tokens:
            raise ConfigError("average='constant' (Dr. GRPO) needs max_tokens: the generation budget")
        return (per_token * m).sum() / max_tokens, rows
    raise ConfigError(f"unknown average {average!r}; choose token, sequence or constant")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, ref_logp: torch.Tensor | None = None, beta: float = 0.0,
              clip_eps: float = 0.2, clip_eps_high: float | None = None, kl: str = "k3",
              average: str = "token", max_tokens: int | None = None) -> tuple[torch.Tensor, int]:
    """GRPO's objective as (sum, count): the clipped surrogate plus β·KL(π ‖ π_ref) per token.

    logp, old_logp, ref_logp, mask (B, T); advantages (B,). β = 0 needs no reference. A sample
    whose reward was skipped (rewards.py) should leave the mask too, not only get advantage 0,
    or its tokens still count and still pay the KL term.
    """
    if beta < 0:
        raise ConfigError(f"the KL coefficient beta must be >= 0, got {beta}")
    per_token = clipped_surrogate(logp, old_logp, advantages, clip_eps, clip_eps_high)  # (B, T)
    if beta > 0:
        if ref_logp is None:
            raise ConfigError("beta > 0 needs the reference model's log-probabilities (ref_logp)")
        per_token = per_token + beta * kl_estimator(kl)(logp, ref_logp.detach())
    return reduce_loss(per_token, mask, average, max_tokens)


def kl_penalized_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                         mask: torch.Tensor, beta: float, kl: str = "k1") -> torch.Tensor:
    """PPO-RLHF's per-token rewards (B, T): -β·KL_t everywhere, + the score (B,) on the last token.

    >>> kl_penalized_rewards(torch.tensor([2.0]), torch.tensor([[-1.0, -1.0, 0.0]]),
    ...                      torch.tensor([[-2.0, -1.0, 0.0]]), torch.tensor([[1, 1, 0]]), 0.5)
    tensor([[-0.5000,  2.0000,  0.0000]])
    """
    m = mask.to(logp.dtype)  # (B, T)
    rewards = torch.zeros_like(m) - beta * kl_estimator(kl)(logp, ref_logp).detach() * m  # (B, T)
    idx = torch.arange(m.size(1), device=m.device)  # (T,)
    last = (idx * (m > 0)).argmax(-1)  # (B,): index of each row's last sampled token
    rewards = rewards.scatter_add(1, last.unsqueeze(1), scores.to(rewards.dtype).unsqueeze(1))
    return rewards * m  # a row with no sampled token keeps no score either


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation: (advantages, returns), each (B, T), 0 where mask is 0.

    δ_t = r_t + γ V_{t+1} - V_t and A_t = δ_t + γλ A_{t+1}, where t+1 is the row's next masked-in
    token and the value after its last one is 0 (the episode ends). Returns = A + V.

    >>> a, r = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2), 1.0, 1.0)
    >>> a, r
    (tensor([[0.5000, 0.5000]]), tensor([[1., 1.]]))
    """
    m = mask.to(values.dtype)  # (B, T)
    next_value = torch.zeros_like(values[:, 0])  # (B,): V after the last token is 0
    next_adv = torch.zeros_like(values[:, 0])  # (B,)
    advantages = torch.zeros_like(values)  # (B, T)
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        adv = delta + gamma * lam * next_adv  # (B,)
        on = m[:, t] > 0  # (B,): a masked-out position is skipped, the carry passes over it
        advantages[:, t] = torch.where(on, adv, 0.0)
        next_value = torch.where(on, values[:, t], next_value)
        next_adv = torch.where(on, adv, next_adv)
    return advantages.detach(), ((advantages + values) * m).detach()


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """x (B, T) normalized to unit variance (and zero mean) over the masked-in entries; 0 elsewhere.

    >>> whiten(torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[1, 1, 0]]))
    tensor([[-1.,  1.,  0.]])
    """
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n  # population variance over the masked-in entries
    out = (x - mean) * torch.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * m


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range: float = 0.2) -> tuple[torch.Tensor, int]:
    """PPO's clipped value loss as (sum, count): ½ max((V - R)², (clip(V, V_old ± ε) - R)²).

    >>> value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1))
    (tensor(0.5000), 1)
    """
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)  # (B, T)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return reduce_loss(per_token, mask, "token")


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_eps: float = 0.2) -> tuple[torch.Tensor, int]:
    """PPO's clipped policy loss as (sum, count) over the masked-in tokens; advantages (B, T)."""
    return reduce_loss(clipped_surrogate(logp, old_logp, advantages.detach(), clip_eps), mask)


def clip_fraction(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                  clip_eps: float = 0.2) -> float:
    """The share of masked-in tokens whose ratio left [1-ε, 1+ε] (a health figure to log)."""
    ratio = torch.exp(logp - old_logp)
    out = ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)) & (mask > 0)
    return float(out.sum()) / max(int((mask > 0).sum()), 1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(label_t) (B, T) from logits (B, T, V), in float32; 0 where the label is -100."""
    keep = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), -1)  # (B, T, V)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked * keep


@torch.no_grad()
def kl_to(model: torch.nn.Module, reference: torch.nn.Module,
          batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(exact KL(model ‖ reference) summed over the batch's trained positions, their count).

    The whole next-token distributions, not a sampled estimate: what "KL to the SFT model"
    reports after training. batch is (x, y) or a packed SFT batch; y = -100 where untrained.
    """
    keep = batch[1] != IGNORE_INDEX  # (B, T)
    p = batch_logits(model, batch)[keep].float()  # (N, V)
    q = batch_logits(reference, batch)[keep].float()  # (N, V)
    return reverse_kl(p, q).sum(), int(keep.sum())
