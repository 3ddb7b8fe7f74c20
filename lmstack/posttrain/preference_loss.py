"""Preference losses on sequence log-probabilities: DPO, IPO, SimPO and ORPO.

Each is a small pure function of (B,) tensors returning the per-pair losses (B,) and the
implicit rewards it compares, from which `metrics` reads chosen/rejected rewards, their margin
and the accuracy (how often the chosen reward is the higher). The `PREFERENCE_LOSSES` registry
lets a run pick one by name and feeds it sums or means (logprobs.py) as the method asks.

- DPO (Rafailov et al. 2023, "Direct Preference Optimization"): with h = (log π(y_w) −
  log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)), the loss is −log σ(β h). Label smoothing ε
  (the conservative DPO of Mitchell 2023) assumes a fraction ε of the labels are flipped:
  −(1 − ε) log σ(β h) − ε log σ(−β h). At the start (π = π_ref) h = 0 and the loss is log 2.
- IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", eq. 17): (h − 1/(2τ))², a squared loss that drives the margin to 1/(2τ)
  instead of to infinity. As in trl (confirmed there with the authors) h is built from
  per-token mean log-probabilities, so τ does not depend on the replies' lengths.
- SimPO (Meng et al. 2024, "Simple Preference Optimization with a Reference-Free Reward"):
  no reference; the reward is the length-normalized log-probability β/|y| log π(y), and the
  loss −log σ(r_w − r_l − γ) asks for a margin γ.
- ORPO (Hong et al. 2024, "Monolithic Preference Optimization without Reference Model"): the
  SFT loss on the chosen reply plus λ times −log σ(log odds(y_w) − log odds(y_l)), with
  odds(y) = P(y) / (1 − P(y)) and P(y) the per-token mean likelihood exp(mean log π(y)).

Why the logged "chosen reward" can go down while training is fine: the loss sees only the
margin. DPO often lowers the likelihood of both replies (they share most of their tokens and
the prompt's style), the rejected one faster; the margin and the accuracy are what should
rise, and the chosen reward falling alone is not a bug (Rafailov et al. 2024; Pal et al. 2024).

Run the tests: `pytest lmstack/posttrain/preference_loss.py --doctest-modules tests/posttrain/test_preference_loss.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.posttrain.logprobs import PairLogprobs


@dataclass(frozen=True)
class PreferenceOutput:
    """Per pair (B,): the loss and the implicit rewards of the chosen and rejected replies."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    def metrics(self) -> dict[str, float]:
        """Batch means of what a run logs: loss, rewards, their margin, and the accuracy."""
        c, r = self.chosen_rewards.detach(), self.rejected_rewards.detach()
        return {"loss": float(self.losses.detach().mean()),
                "rewards/chosen": float(c.mean()), "rewards/rejected": float(r.mean()),
                "rewards/margin": float((c - r).mean()),
                "rewards/accuracy": float((c > r).float().mean())}


def _smoothed_logistic(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """−(1 − ε) log σ(x) − ε log σ(−x): the logistic loss with a fraction ε of flipped labels."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> PreferenceOutput:
    """DPO on summed sequence log-probabilities (B,); rewards β (log π − log π_ref).

    >>> lp = torch.tensor([-5.0, -7.0])
    >>> out = dpo_loss(lp, lp - 1, lp, lp - 1)          # policy == reference: h = 0
    >>> [round(x, 4) for x in out.losses.tolist()], round(math.log(2), 4)
    ([0.6931, 0.6931], 0.6931)
    >>> out = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
    ...                torch.tensor([-2.0]), beta=0.5)   # h = 1 - (-1) = 2: -log σ(1)
    >>> round(float(out.losses), 4), out.chosen_rewards.tolist(), out.rejected_rewards.tolist()
    (0.3133, [0.5], [-0.5])
    """
    chosen_logratio = policy_chosen - ref_chosen      # (B,) log π/π_ref of the chosen reply
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio
    losses = _smoothed_logistic(beta * h, label_smoothing)
    return PreferenceOutput(losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach())


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             tau: float = 0.1) -> PreferenceOutput:
    """IPO on per-token mean log-probabilities (B,): (h − 1/(2τ))²; rewards the log ratios.

    >>> z = torch.zeros(1)
    >>> out = ipo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), z, z, tau=0.25)  # h = 1, target 2
    >>> float(out.losses), float(out.chosen_rewards - out.rejected_rewards)
    (1.0, 1.0)
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio                # (B,), driven to 1/(2τ)
    losses = (h - 1 / (2 * tau)) ** 2
    return PreferenceOutput(losses, chosen_logratio.detach(), rejected_logratio.detach())


def simpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, beta: float = 2.0,
               gamma: float = 0.5, label_smoothing: float = 0.0) -> PreferenceOutput:
    """SimPO on per-token mean log-probabilities (B,), no reference: −log σ(β Δmean − γ).

    >>> out = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.5]), beta=2.0, gamma=0.5)
    >>> round(float(out.losses), 4), round(-math.log(1 / (1 + math.exp(-0.5))), 4)  # 2·0.5 − 0.5
    (0.4741, 0.4741)
    """
    chosen_reward, rejected_reward = beta * policy_chosen, beta * policy_rejected  # β/|y| log π
    losses = _smoothed_logistic(chosen_reward - rejected_reward - gamma, label_smoothing)
    return PreferenceOutput(losses, chosen_reward.detach(), rejected_reward.detach())


def log_odds(mean_logprob: torch.Tensor) -> torch.Tensor:
    """log(P / (1 − P)) for P = exp(mean_logprob) < 1, computed stably: log P − log(1 − P).

    >>> round(float(log_odds(torch.tensor(math.log(0.25)))), 4), round(math.log(0.25 / 0.75), 4)
    (-1.0986, -1.0986)
    """
    x = mean_logprob.clamp(max=-1e-12)  # P = 1 has infinite odds; a mean log-prob is never > 0
    # log(1 − e^x): log1p(−e^x) is exact for small e^x, log(−expm1(x)) near x = 0 (Mächler 2012)
    log1mexp = torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))
    return x - log1mexp


def orpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
              chosen_nll: torch.Tensor, lam: float = 0.1) -> PreferenceOutput:
    """ORPO on per-token mean log-probabilities (B,) plus the chosen reply's SFT loss (B,):
    nll − λ log σ(log odds(y_w) − log odds(y_l)); rewards the log odds.

    >>> mean = torch.tensor([math.log(0.5)])           # P = 1/2: odds 1, log odds 0
    >>> out = orpo_loss(mean, mean, chosen_nll=torch.tensor([0.7]), lam=1.0)
    >>> round(float(out.losses), 4), round(0.7 + math.log(2), 4)
    (1.3931, 1.3931)
    """
    chosen_odds, rejected_odds = log_odds(policy_chosen), log_odds(policy_rejected)
    odds_ratio_loss = -F.logsigmoid(chosen_odds - rejected_odds)   # (B,)
    return PreferenceOutput(chosen_nll + lam * odds_ratio_loss, chosen_odds.detach(), rejected_odds.detach())


# ---- the registry ------------------------------------------------------------------------

@dataclass
class PreferenceLossConfig:
    """Which loss and its knobs; `beta` None takes the method's default (DPO's β, IPO's τ,
    SimPO's β, ORPO's λ: the one strength each method has)."""

    loss: str = "dpo"              # a name in PREFERENCE_LOSSES
    beta: float | None = None      # None: 0.1 (dpo, ipo, orpo), 2.0 (simpo)
    label_smoothing: float = 0.0   # dpo, simpo: the fraction of labels assumed flipped, [0, 0.5)
    gamma: float = 0.5             # simpo: the target reward margin

    def __post_init__(self) -> None:
        method(self.loss)
        if self.beta is not None and not self.beta > 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}; "
                              "0.5 would mean the labels carry no information")
        if self.label_smoothing and self.loss not in ("dpo", "simpo"):
            raise ConfigError(f"label_smoothing applies to dpo and simpo, not {self.loss!r}; set it to 0")

    @property
    def strength(self) -> float:
        """beta, or the method's default."""
        return self.beta if self.beta is not None else method(self.loss).default_beta


@dataclass(frozen=True)
class PreferenceMethod:
    """A loss of the registry: whether it needs a reference model, its default strength, and
    how it reads the policy's (and reference's) log-probabilities."""

    needs_reference: bool
    default_beta: float
    apply: Callable[[PairLogprobs, PairLogprobs | None, PreferenceLossConfig], PreferenceOutput]


def _dpo(p: PairLogprobs, ref: PairLogprobs, cfg: PreferenceLossConfig) -> PreferenceOutput:
    return dpo_loss(p.chosen.sum, p.rejected.sum, ref.chosen.sum, ref.rejected.sum,
                    cfg.strength, cfg.label_smoothing)


def _ipo(p: PairLogprobs, ref: PairLogprobs, cfg: PreferenceLossConfig) -> PreferenceOutput:
    return ipo_loss(p.chosen.mean, p.rejected.mean, ref.chosen.mean, ref.rejected.mean, cfg.strength)


def _simpo(p: PairLogprobs, ref: None, cfg: PreferenceLossConfig) -> PreferenceOutput:
    return simpo_loss(p.chosen.mean, p.rejected.mean, cfg.strength, cfg.gamma, cfg.label_smoothing)


def _orpo(p: PairLogprobs, ref: None, cfg: PreferenceLossConfig) -> PreferenceOutput:
    # The SFT term per pair: the chosen reply's mean token NLL (trl averages over the whole
    # batch's chosen tokens, prompt included; the paper's L_SFT is on the reply).
    return orpo_loss(p.chosen.mean, p.rejected.mean, -p.chosen.mean, cfg.strength)


PREFERENCE_LOSSES: dict[str, PreferenceMethod] = {
    "dpo": PreferenceMethod(True, 0.1, _dpo),
    "ipo": PreferenceMethod(True, 0.1, _ipo),
    "simpo": PreferenceMethod(False, 2.0, _simpo),
    "orpo": PreferenceMethod(False, 0.1, _orpo),
}


def method(name: str) -> PreferenceMethod:
    """The registry's entry for `name`; ConfigError listing the choices otherwise."""
    if name not in PREFERENCE_LOSSES:
        raise ConfigError(f"unknown preference loss {name!r}; choose one of {sorted(PREFERENCE_LOSSES)}")
    return PREFERENCE_LOSSES[name]


def preference_loss(cfg: PreferenceLossConfig, policy: PairLogprobs,
                    reference: PairLogprobs | None = None) -> PreferenceOutput:
    """The configured loss of a batch of pairs; the reference is required by dpo and ipo
    (a frozen copy, or the base with its adapters off) and unused by simpo and orpo."""
    m = method(cfg.loss)
    if m.needs_reference and reference is None:
        raise ConfigError(f"the {cfg.loss} loss compares the policy with a reference model; pass "
                          "the reference's log-probabilities (logprobs.reference_logprobs)")
    return m.apply(policy, reference if m.needs_reference else None, cfg)
