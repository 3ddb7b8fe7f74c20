"""The configuration of a supervised fine-tuning run: the trainer's, plus the data and the method.

    lmstack sft --model smollm2 --data chats.jsonl --out runs/sft --set peft.method=lora peft.r=16

`SFTConfig` is a `TrainConfig` (lmstack/train/config.py: the same TOML tables, `--set` overrides,
type and range checks, resolved config written beside the checkpoint) whose `data` is a JSONL
file of chats or prompt/completion pairs, whose model is an existing one (`base_model`: a model
directory, an HF directory, a GGUF file or an installed short name) instead of a `[model]`
table, and with a `[peft]` table choosing full fine-tuning or a parameter-efficient method.
`block_size` is the packed row length: an example longer than it is cut (and reported).

    >>> from lmstack.train.config import apply_overrides
    >>> cfg = apply_overrides(SFTConfig(), ["peft.method=lora", "peft.r=4", "steps=20"]).check()
    >>> cfg.peft.method, cfg.peft.r, cfg.schedule.total_steps
    ('lora', 4, 20)
    >>> apply_overrides(SFTConfig(), ["peft.method=dora"])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: peft.method must be one of full, lora, qlora, prompt, adapters, got 'dora'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lmstack.errors import ConfigError
from lmstack.train.config import RULES, TrainConfig
from lmstack.train.fields import Check, Matches, OneOf, Range
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig

METHODS = ("full", "lora", "qlora", "prompt", "adapters")


@dataclass
class PeftSettings:
    """Which parameters train: all of them (`full`), or a parameter-efficient method's."""

    method: str = "full"  # full | lora | qlora (LoRA on a 4-bit base) | prompt | adapters
    r: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scale alpha / r
    dropout: float = 0.0  # on the LoRA branch's input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    use_rslora: bool = False  # scale by alpha / sqrt(r)
    quant: str = "nf4"  # qlora's frozen base: nf4 (the paper's, double-quantized) | int4 (ours)
    group_size: int = 64  # qlora int4: weights per scale and zero point (32 holds GGUF Q4_1 exactly)
    virtual_tokens: int = 20  # prompt tuning: soft-prompt length
    bottleneck: int = 64  # adapters: the bottleneck width


SFT_RULES: dict[str, Check] = {
    **RULES,
    "base_model": Matches(r"(?s).+", "a model directory, GGUF file or installed name"),
    "val_data": Matches(r"(?s).+", "a JSONL path or none"),
    "val_fraction": Range(0, 1, hi_open=True, hint="the share of examples held out; 0 with val_data"),
    "max_samples": Range(0),
    "peft.method": OneOf(METHODS),
    "peft.r": Range(1), "peft.alpha": Range(0, lo_open=True),
    "peft.dropout": Range(0, 1, hi_open=True),
    "peft.quant": OneOf(("nf4", "int4")),
    "peft.group_size": OneOf((32, 64, 128, 256)),
    "peft.virtual_tokens": Range(1), "peft.bottleneck": Range(1),
}


def _sft_schedule() -> ScheduleConfig:
    return ScheduleConfig(lr=2e-5, min_lr=2e-6, warmup_steps=10)


@dataclass
class SFTConfig(TrainConfig):
    """A fine-tuning run: an existing model, a chat JSONL file, a method; the trainer's settings."""

    rules: ClassVar[dict[str, Check]] = SFT_RULES
    data: str = "sft.jsonl"  # JSONL: {"messages": [...]} or {"prompt": ..., "completion": ...}
    base_model: str = "smollm2"  # what is fine-tuned (--model)
    out_dir: str = "runs/sft"
    val_data: str | None = None  # held-out JSONL; default: val_fraction of `data`
    val_fraction: float = 0.1  # examples held out of `data` (seeded) when val_data is unset
    train_on_prompt: bool = False  # train on every token, not only the assistant's
    pack: bool = True  # several examples per row (block-diagonal attention); else one per row
    max_samples: int = 2  # held-out prompts answered at each sample_every
    peft: PeftSettings = field(default_factory=PeftSettings)
    model: dict = field(default_factory=dict)  # filled from base_model (for train_config.json)
    schedule: ScheduleConfig = field(default_factory=_sft_schedule)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(weight_decay=0.0))
    batch_size: int = 8
    block_size: int = 512  # packed row length (tokens); longer examples are cut from the right
    steps: int = 200
    eval_every: int = 50
    eval_batches: int = 50
    save_every: int = 100

    def check_model(self) -> None:
        """The model is `base_model`'s own; `val_data` and `val_fraction` agree."""
        if self.val_data is None and self.val_fraction == 0 and self.eval_every:
            raise ConfigError("no held-out data: set val_data=FILE.jsonl or val_fraction>0 "
                              "(e.g. 0.1), or eval_every=0 to train without validation")
