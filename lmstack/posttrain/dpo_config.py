"""The configuration of a preference-optimization run (`lmstack dpo`): SFT's plus a [dpo] table.

    lmstack dpo --model runs/sft --data pairs.jsonl --out runs/dpo --set dpo.beta=0.1
    lmstack dpo --model runs/sft --data pairs.jsonl --set dpo.loss=simpo peft.method=lora

`DPOConfig` is an `SFTConfig` (lmstack/posttrain/sft_config.py: base_model, data, val_data or
val_fraction, block_size as the longest side of a pair, the [peft] table) whose data are
preference pairs, with the loss in `[dpo]` (preference_loss.py's PreferenceLossConfig: `loss`
dpo | ipo | simpo | orpo, `beta`, `label_smoothing`, `gamma`) and the frozen `reference` the
policy is held near (dpo and ipo): a model path, or by default the base itself — a frozen copy,
or with LoRA the policy with its adapters switched off (no copy).

    >>> from lmstack.train.config import apply_overrides
    >>> cfg = apply_overrides(DPOConfig(), ["dpo.loss=ipo", "dpo.beta=0.5"]).check()
    >>> cfg.dpo.loss, cfg.dpo.strength, cfg.reference
    ('ipo', 0.5, None)
    >>> apply_overrides(DPOConfig(), ["dpo.loss=kto"])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: dpo.loss must be one of dpo, ipo, simpo, orpo, got 'kto'
    >>> apply_overrides(DPOConfig(), ["dpo.loss=simpo", "reference=runs/sft"]).check()
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: dpo.loss=simpo uses no reference model, so reference=runs/sft would be ignored; drop --reference (or use dpo.loss=dpo or ipo)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from lmstack.errors import ConfigError
from lmstack.posttrain.preference_loss import (
    PREFERENCE_LOSSES,
    PreferenceLossConfig,
    method,
)
from lmstack.posttrain.sft_config import SFT_RULES, SFTConfig
from lmstack.train.fields import Check, Matches, OneOf, Range
from lmstack.train.schedule import ScheduleConfig

DPO_RULES: dict[str, Check] = {
    **SFT_RULES,
    "reference": Matches(r"(?s).+", "a model directory, GGUF file or installed name, or none"),
    "dpo.loss": OneOf(tuple(PREFERENCE_LOSSES)),
    "dpo.beta": Range(0, lo_open=True, hint="none: the loss's default, 0.1 (dpo, ipo, orpo) or 2.0 (simpo)"),
    "dpo.label_smoothing": Range(0, 0.5, hi_open=True, hint="dpo and simpo only"),
    "dpo.gamma": Range(0, hint="simpo's target margin"),
}


def _dpo_schedule() -> ScheduleConfig:
    # Lower than SFT's: the policy starts at its reference and should move little (full
    # fine-tuning; LoRA's few parameters want ~10x more, e.g. schedule.lr=5e-5).
    return ScheduleConfig(lr=5e-6, min_lr=5e-7, warmup_steps=10)


@dataclass
class DPOConfig(SFTConfig):
    """A policy trained on preference pairs with DPO or a variant, near a frozen reference."""

    rules: ClassVar[dict[str, Check]] = DPO_RULES
    data: str = "pairs.jsonl"  # JSONL: {"prompt", "chosen", "rejected"} (text or messages)
    out_dir: str = "runs/dpo"
    reference: str | None = None  # None: the base (a frozen copy; with LoRA, adapters off)
    dpo: PreferenceLossConfig = field(default_factory=PreferenceLossConfig)
    schedule: ScheduleConfig = field(default_factory=_dpo_schedule)

    def check_model(self) -> None:
        """SFT's checks; the loss's own (PreferenceLossConfig); a reference only where it is used."""
        super().check_model()
        try:  # the loss's cross-field checks (label_smoothing with a loss that has none)
            self.dpo = PreferenceLossConfig(**dataclasses.asdict(self.dpo))
        except ConfigError as e:
            raise ConfigError(f"[dpo] {e}") from None
        if self.reference is not None and not method(self.dpo.loss).needs_reference:
            raise ConfigError(f"dpo.loss={self.dpo.loss} uses no reference model, so "
                              f"reference={self.reference} would be ignored; drop --reference "
                              "(or use dpo.loss=dpo or ipo)")
