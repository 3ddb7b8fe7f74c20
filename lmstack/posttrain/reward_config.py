"""The configuration of a reward-model run (`lmstack reward`): SFT's, on preference pairs.

    lmstack reward --model runs/sft --data pairs.jsonl --out runs/rm --set peft.method=lora

`RewardConfig` is an `SFTConfig` (lmstack/posttrain/sft_config.py: base_model, data, val_data or
val_fraction, block_size as the longest side of a pair, the [peft] table) whose data are
preference pairs (preference.py's layouts). A reward model is a model directory with whole
weights, so the methods are `full` and `lora` (merged into the weights when OUT is written);
the scalar head trains with either.

    >>> from lmstack.train.config import apply_overrides
    >>> apply_overrides(RewardConfig(), ["peft.method=lora"]).check().peft.method
    'lora'
    >>> apply_overrides(RewardConfig(), ["peft.method=prompt"])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: peft.method must be one of full, lora (a reward model directory holds whole weights: LoRA is merged into them; prompt tuning, adapters and QLoRA would need their base beside them), got 'prompt'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lmstack.errors import ConfigError
from lmstack.posttrain.sft_config import SFT_RULES, SFTConfig
from lmstack.train.fields import Check, OneOf

REWARD_METHODS = ("full", "lora")

REWARD_RULES: dict[str, Check] = {
    **SFT_RULES,
    "peft.method": OneOf(REWARD_METHODS, hint="a reward model directory holds whole weights: LoRA "
                         "is merged into them; prompt tuning, adapters and QLoRA would need their "
                         "base beside them"),
}


@dataclass
class RewardConfig(SFTConfig):
    """A reward model trained on preference pairs: a base, a pairs JSONL file, full or LoRA."""

    rules: ClassVar[dict[str, Check]] = REWARD_RULES
    data: str = "pairs.jsonl"  # JSONL: {"prompt", "chosen", "rejected"} (text or messages)
    out_dir: str = "runs/reward"

    def check_model(self) -> None:
        """SFT's checks; a reward model is not sharded (FSDP rebuilds a plain LM to save)."""
        super().check_model()
        if self.parallel == "fsdp":
            raise ConfigError("lmstack reward runs under DDP, not FSDP (its checkpoints hold the "
                              "reward head beside the LM); set parallel=ddp")
