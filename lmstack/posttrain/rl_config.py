"""The configuration of an RL fine-tuning run (`lmstack rl`): SFT's, plus the algorithm, the reward
and an [rl] table.

    lmstack rl --algo grpo --reward exact_answer --model runs/sft --data prompts.jsonl --out runs/grpo
               --set rl.k=8 rl.prompts_per_step=8 rl.beta=0.0 peft.method=lora
    lmstack rl --algo ppo --reward runs/rm --model runs/sft --data prompts.jsonl --out runs/ppo

`RLConfig` is an `SFTConfig` (sft_config.py: base_model, data, val_data or val_fraction, the
[peft] table, the trainer's settings) whose data are prompts with what the reward checks
(rl_data.py), with

- `algo`: grpo (Shao et al. 2024: k samples per prompt, group-normalized advantages, no value
  model) or ppo (Ouyang et al. 2022: a value head, GAE, a per-token KL penalty in the reward);
- `reward`: a Python reward of rewards.py's registry (exact_answer, json_schema, regex) or a
  reward model directory (`lmstack reward`'s OUT);
- `[rl]`: sampling (k, prompts_per_step, max_new_tokens, temperature, top_p), the update
  (epochs per rollout batch, clip_eps, beta and the KL estimator, the averaging), GRPO's
  scale_by_std and PPO's gamma, lam, vf_coef, value_clip, whiten.

Settings left unset take the algorithm's usual value: epochs 1 for GRPO (TRL's default: strictly
on-policy) and 4 for PPO; beta 0 for GRPO (as in DAPO and Dr. GRPO) and 0.05 for PPO; kl k3 for
GRPO's loss term, k1 for PPO's reward penalty (InstructGPT's log-ratio).

    >>> from lmstack.train.config import apply_overrides
    >>> cfg = apply_overrides(RLConfig(), ["algo=ppo"]).check()
    >>> cfg.rl.epochs, cfg.rl.beta, cfg.rl.kl
    (4, 0.05, 'k1')
    >>> apply_overrides(RLConfig(), ["rl.k=1"]).check()
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: GRPO normalizes each prompt's rewards over its k samples, so it needs rl.k >= 2 (got 1); set rl.k=8, or use algo=ppo, which learns from single samples
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lmstack.errors import ConfigError
from lmstack.posttrain.rewards import REWARDS
from lmstack.posttrain.rl_math import KL_ESTIMATORS
from lmstack.posttrain.sft_config import SFT_RULES, SFTConfig
from lmstack.train.fields import Check, Matches, OneOf, Range
from lmstack.train.schedule import ScheduleConfig

ALGOS = ("grpo", "ppo")
RL_METHODS = ("full", "lora", "qlora")  # LoRA's reference is the policy with its adapters off
# What an unset setting becomes, per algorithm (module docstring says why).
ALGO_DEFAULTS = {"grpo": {"epochs": 1, "beta": 0.0, "kl": "k3"},
                 "ppo": {"epochs": 4, "beta": 0.05, "kl": "k1"}}


@dataclass
class RLSettings:
    """Sampling and the update of an RL run (None: the algorithm's default, ALGO_DEFAULTS)."""

    k: int = 8  # samples per prompt (GRPO's group size; >= 2 for GRPO)
    prompts_per_step: int = 8  # prompts per optimizer step on each process (x k rollouts)
    max_new_tokens: int = 32  # the longest completion sampled
    temperature: float = 1.0  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus sampling of the rollouts (1: off)
    epochs: int | None = None  # optimizer steps per rollout batch (GRPO's mu, PPO's epochs)
    clip_eps: float = 0.2  # the ratio's clip range [1 - eps, 1 + eps_high]
    clip_eps_high: float | None = None  # DAPO's clip-higher (None: clip_eps)
    beta: float | None = None  # KL coefficient (GRPO: in the loss; PPO: in the reward)
    kl: str | None = None  # KL estimator k1 | k2 | k3
    average: str = "token"  # token (DAPO) | sequence (GRPO's paper) | constant (Dr. GRPO)
    scale_by_std: bool = True  # GRPO: divide by the group's std (Dr. GRPO: false)
    gamma: float = 1.0  # PPO: discount
    lam: float = 0.95  # PPO: GAE's lambda
    vf_coef: float = 0.1  # PPO: weight of the value loss
    value_clip: float = 0.2  # PPO: the value's clip range around its old value
    whiten: bool = True  # PPO: advantages whitened over the rollout batch
    reference_kl: bool = True  # measure the KL to the reference even at beta 0 (full: a copy)
    eval_prompts: int = 64  # held-out prompts answered greedily at each validation
    pattern: str = ""  # reward=regex: the pattern a completion must match
    schema: str = ""  # reward=json_schema: a JSON Schema file (empty: each record's "schema")


RL_RULES: dict[str, Check] = {
    **SFT_RULES,
    "algo": OneOf(ALGOS),
    "reward": Matches(r"(?s).+", f"one of {', '.join(REWARDS)}, or a reward model directory"),
    "peft.method": OneOf(RL_METHODS, hint="the reference is the base, a frozen copy or with LoRA "
                         "the policy with its adapters off"),
    "rl.k": Range(1), "rl.prompts_per_step": Range(1), "rl.max_new_tokens": Range(1),
    "rl.temperature": Range(0, lo_open=True, hint="rollouts are sampled; greedy would give k "
                            "equal samples"),
    "rl.top_p": Range(0, 1, lo_open=True),
    "rl.epochs": Range(1), "rl.clip_eps": Range(0, 1, lo_open=True, hi_open=True),
    "rl.clip_eps_high": Range(0, lo_open=True),
    "rl.beta": Range(0, hint="0: no KL term"),
    "rl.kl": OneOf(tuple(KL_ESTIMATORS)),
    "rl.average": OneOf(("token", "sequence", "constant")),
    "rl.gamma": Range(0, 1), "rl.lam": Range(0, 1), "rl.vf_coef": Range(0),
    "rl.value_clip": Range(0, lo_open=True), "rl.eval_prompts": Range(1),
}


def _rl_schedule() -> ScheduleConfig:
    # TRL's GRPO default for full fine-tuning; LoRA's few parameters want ~10-100x more.
    return ScheduleConfig(lr=1e-6, min_lr=1e-7, warmup_steps=0)


@dataclass
class RLConfig(SFTConfig):
    """A policy trained on its own samples: GRPO or PPO, a Python reward or a reward model."""

    rules: ClassVar[dict[str, Check]] = RL_RULES
    data: str = "prompts.jsonl"  # JSONL: {"prompt" or "messages", "answer"} per line
    out_dir: str = "runs/rl"
    algo: str = "grpo"  # grpo | ppo (--algo)
    reward: str = "exact_answer"  # exact_answer | json_schema | regex | a reward model directory
    rl: RLSettings = field(default_factory=RLSettings)
    schedule: ScheduleConfig = field(default_factory=_rl_schedule)
    block_size: int = 256  # the longest prompt + completion
    batch_size: int = 64  # derived: the rollouts of one micro-batch (prompts_per_step·k / grad_accum)
    steps: int = 200
    eval_every: int = 20
    save_every: int = 50

    @property
    def reward_model(self) -> bool:
        """Whether the reward is a model directory rather than a Python reward."""
        return self.reward not in REWARDS

    def check_model(self) -> None:
        """SFT's checks, the algorithm's defaults filled in, and settings that fit together."""
        super().check_model()
        s = self.rl
        for key, value in ALGO_DEFAULTS[self.algo].items():
            if getattr(s, key) is None:
                setattr(s, key, value)
        if self.algo == "grpo" and s.k < 2:
            raise ConfigError(f"GRPO normalizes each prompt's rewards over its k samples, so it "
                              f"needs rl.k >= 2 (got {s.k}); set rl.k=8, or use algo=ppo, which "
                              "learns from single samples")
        if self.algo == "ppo" and s.average != "token":
            raise ConfigError(f"PPO's policy and value losses are averaged over tokens; "
                              f"rl.average={s.average} is GRPO's option, so set rl.average=token")
        rows = s.prompts_per_step * s.k
        if rows % self.grad_accum:
            raise ConfigError(f"{rows} rollouts per step (rl.prompts_per_step x rl.k) do not split "
                              f"into grad_accum={self.grad_accum} micro-batches; make the product a "
                              "multiple of grad_accum")
        self.batch_size = rows // self.grad_accum
        if s.max_new_tokens >= self.block_size:
            raise ConfigError(f"rl.max_new_tokens={s.max_new_tokens} leaves no room for a prompt "
                              f"in block_size={self.block_size}; raise block_size or lower it")
        if self.reward == "regex" and not s.pattern:
            raise ConfigError("reward=regex needs the pattern a completion must match: set "
                              "rl.pattern='^\\d+$' (for example)")
        if self.reward_model and not Path(self.reward).exists():
            raise ConfigError(f"reward {self.reward!r} is neither a Python reward "
                              f"({', '.join(REWARDS)}) nor a reward model directory; pass one of "
                              "those names or the OUT of `lmstack reward`")
        if self.parallel == "fsdp":
            raise ConfigError("rl samples from the policy between steps, which a sharded (FSDP) "
                              "model cannot do alone; use parallel=ddp")
