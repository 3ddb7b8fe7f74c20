"""The configuration of a distillation run: an SFT run's, plus the teacher, the mode and [distill].

    lmstack distill --mode kd --teacher runs/big --model runs/small --data chats.jsonl --out runs/kd
                    --set distill.divergence=reverse_kl distill.temperature=2

`DistillConfig` is an `SFTConfig` (sft_config.py: the student is `base_model`, `--model`; the
data, the held-out share, `[peft]` and the trainer's settings) with a `teacher` model and a
`mode` (distill_run.py says what each does):

- `data`: the teacher writes the answers (Kim & Rush 2016, sequence-level distillation), the
  student is fine-tuned on them (any tokenizers);
- `kd`: the student matches the teacher's next-token distribution on the data's answers
  (Hinton et al. 2015; one tokenizer);
- `gkd`: on-policy distillation (Agarwal et al. 2024): a share `lmbda` of the batches are the
  student's own samples, which the teacher scores token by token (one tokenizer).

    >>> from lmstack.train.config import apply_overrides
    >>> cfg = apply_overrides(DistillConfig(), ["teacher=big", "mode=gkd", "distill.lmbda=1"]).check()
    >>> cfg.mode, cfg.distill.lmbda, cfg.divergence_name()
    ('gkd', 1.0, 'jsd')
    >>> apply_overrides(DistillConfig(), ["distill.divergence=forward"])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: distill.divergence must be one of auto, forward_kl, reverse_kl, jsd, got 'forward'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lmstack.errors import ConfigError
from lmstack.posttrain.distill_loss import DIVERGENCES
from lmstack.posttrain.sft_config import SFT_RULES, SFTConfig
from lmstack.train.fields import Check, Matches, OneOf, Range

MODES = ("data", "kd", "gkd")
# distill.divergence=auto: the classic choice of each logit mode (GKD's paper and TRL use JSD)
AUTO_DIVERGENCE = {"data": "forward_kl", "kd": "forward_kl", "gkd": "jsd"}


@dataclass
class DistillSettings:
    """How the student learns from the teacher: the divergence, sampling, the GKD mixture."""

    divergence: str = "auto"  # auto (kd: forward_kl, gkd: jsd) | forward_kl | reverse_kl | jsd
    temperature: float = 1.0  # kd/gkd: both distributions softened by T, the loss times T²
    beta: float = 0.5  # jsd's β: 0 is forward KL, 1 reverse KL
    alpha: float = 0.0  # kd: loss = (1 - alpha) · divergence + alpha · cross-entropy on the labels
    lmbda: float = 0.5  # gkd: the share of batches whose answers the student samples itself
    max_new_tokens: int = 64  # data: the teacher's answers; gkd: the student's samples
    teacher_temperature: float = 0.0  # data: 0 is greedy, > 0 samples
    samples_per_prompt: int = 1  # data: answers per prompt (> 1 needs teacher_temperature > 0)
    student_temperature: float = 1.0  # gkd: the student's sampling temperature (the paper's 1)
    generate_batch: int = 16  # data: prompts the teacher answers together (and per saved chunk)


DISTILL_RULES: dict[str, Check] = {
    **SFT_RULES,
    "teacher": Matches(r"(?s).+", "a model directory, GGUF file or installed name"),
    "mode": OneOf(MODES),
    "distill.divergence": OneOf(("auto", *DIVERGENCES)),
    "distill.temperature": Range(0, lo_open=True),
    "distill.beta": Range(0, 1),
    "distill.alpha": Range(0, 1),
    "distill.lmbda": Range(0, 1),
    "distill.max_new_tokens": Range(1),
    "distill.teacher_temperature": Range(0),
    "distill.samples_per_prompt": Range(1),
    "distill.student_temperature": Range(0, lo_open=True, hint="gkd samples; greedy would be "
                                         "one fixed answer per prompt"),
    "distill.generate_batch": Range(1),
}


@dataclass
class DistillConfig(SFTConfig):
    """A distillation run: the student (`base_model`), the teacher, the mode, [distill]."""

    rules: ClassVar[dict[str, Check]] = DISTILL_RULES
    teacher: str | None = None  # the teacher model (--teacher)
    mode: str = "kd"  # data | kd | gkd (--mode)
    out_dir: str = "runs/distill"
    distill: DistillSettings = field(default_factory=DistillSettings)

    def divergence_name(self) -> str:
        """The divergence this run minimizes (distill.divergence, `auto` resolved by mode)."""
        d = self.distill.divergence
        return AUTO_DIVERGENCE[self.mode] if d == "auto" else d

    def check_model(self) -> None:
        """SFT's checks, a teacher, and settings that fit the mode."""
        super().check_model()
        if self.teacher is None:
            raise ConfigError("distillation needs a teacher: pass --teacher DIR (a model "
                              "directory, HF directory, GGUF file or installed name)")
        s = self.distill
        if s.samples_per_prompt > 1 and s.teacher_temperature == 0:
            raise ConfigError(f"distill.samples_per_prompt={s.samples_per_prompt} with greedy "
                              "decoding would write the same answer each time; set "
                              "distill.teacher_temperature>0 (e.g. 0.8) or samples_per_prompt=1")
        if s.alpha > 0 and self.mode != "kd":
            raise ConfigError(f"distill.alpha mixes the cross-entropy on the data's answers into "
                              f"kd's loss; mode {self.mode} has none to mix (gkd's on-policy "
                              "answers are the student's own), so set distill.alpha=0")
        if self.mode == "gkd" and self.parallel == "fsdp":
            raise ConfigError("gkd samples from the student between steps, which a sharded "
                              "(FSDP) model cannot do alone; use parallel=ddp")
