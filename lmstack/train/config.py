"""Training configuration: one dataclass tree, loadable from TOML, overridable per field.

    lmstack train --config configs/quickstart.toml --set schedule.lr=3e-4 model.n_layer=6

A TOML file has top-level keys for `TrainConfig` and tables `[model]` (a model `config.json`
dict: `model_type` plus that model's fields), `[optim]` and `[schedule]`. Overrides are
`dotted.key=value` with the value parsed as a TOML literal (so `3e-4`, `true`, `"gelu"` and
`[1, 2]` work; a bare word is a string). Overriding `model.model_type` with another type starts
an empty model table (the defaults of the new model apply). The resolved config is written
next to the checkpoint (`train_config.json`), so a run can always be reproduced.

    >>> cfg = apply_overrides(TrainConfig(), ["schedule.lr=3e-4", "model.n_layer=2", "steps=50"])
    >>> cfg.schedule.lr, cfg.model["n_layer"], cfg.steps
    (0.0003, 2, 50)
    >>> cfg.check().schedule.total_steps  # unset: the schedule spans the run
    50
    >>> apply_overrides(TrainConfig(), ["model.model_type=gru", "model.n_embd=8"]).model
    {'model_type': 'gru', 'n_embd': 8}
    >>> apply_overrides(TrainConfig(), ["schedule.lrr=1"])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: unknown setting 'schedule.lrr': ScheduleConfig has no field 'lrr' ...
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmstack.errors import ConfigError
from lmstack.train.optim import OptimConfig
from lmstack.train.qat import check_qat
from lmstack.train.schedule import ScheduleConfig


def _default_model() -> dict[str, Any]:
    return {"model_type": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128}


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults train a small GPT on `data`."""

    data: str = "runs/quickstart/data"  # shard directory from `lmstack data prepare`
    tokenizer: str | None = None  # default: the tokenizer.json next to the shards' manifest
    out_dir: str = "runs/train"
    model: dict[str, Any] = field(default_factory=_default_model)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 16
    block_size: int = 128  # tokens per training sequence (<= the model's context)
    grad_accum: int = 1  # micro-batches per optimizer step
    steps: int = 2000  # optimizer steps in total
    max_minutes: float | None = None  # stop earlier when this wall-time budget is spent
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU/CUDA) | fp16 (autocast + scaler, CUDA)
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    parallel: str = "ddp"  # under torchrun: ddp (replicas) or fsdp (sharded, FSDP2)
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    seed: int = 1337
    eval_every: int = 200  # steps between validation runs; 0 disables
    eval_batches: int = 20
    target_val_loss: float | None = None  # stop at the first validation loss <= this
    sample_every: int = 0  # steps between printed samples; 0 disables
    save_every: int = 500  # steps between checkpoints (and always at the end)
    log_every: int = 10
    scheduled_sampling: float = 0.0  # RNNs: final probability of feeding own predictions
    qat_bits: int | None = None  # quantization-aware training: 8 or 4 (train/qat.py); None = off
    qat_group_size: int = 64  # int4 QAT group size (32, 64, 128, 256), as `lmstack quantize`'s
    resume: bool = False  # continue from out_dir's checkpoint
    progress: bool = True

    def check(self) -> TrainConfig:
        """Return self (with schedule.total_steps resolved), or raise ConfigError naming the fix."""
        if self.schedule.total_steps is None:
            # The schedule spans the run unless told otherwise: `steps=50` alone must not leave
            # a 2000-step cosine that never leaves its warmup.
            self.schedule.total_steps = self.steps
        self.optim.check()
        self.schedule.check()
        for name in ("batch_size", "block_size", "grad_accum", "steps", "eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision {self.precision!r} is not fp32, bf16 or fp16")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"parallel {self.parallel!r} is not 'ddp' or 'fsdp'")
        if self.target_val_loss is not None and not self.eval_every:
            raise ConfigError("target_val_loss needs validation to stop on: set eval_every "
                              "to a number of steps, e.g. eval_every=100")
        check_qat(self.qat_bits, self.qat_group_size)
        if not 0 <= self.scheduled_sampling <= 1:
            raise ConfigError("scheduled_sampling is a probability: use a value in [0, 1]")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for train_config.json)."""
        return dataclasses.asdict(self)


def _set(obj: Any, dotted: str, value: Any, full: str) -> None:
    head, _, rest = dotted.partition(".")
    if isinstance(obj, dict):
        if rest:
            _set(obj.setdefault(head, {}), rest, value, full)
        else:
            obj[head] = value
        return
    names = [f.name for f in dataclasses.fields(obj)]
    if head not in names:
        raise ConfigError(
            f"unknown setting {full!r}: {type(obj).__name__} has no field {head!r} "
            f"(fields: {', '.join(names)})"
        )
    if rest:
        _set(getattr(obj, head), rest, value, full)
        return
    current = getattr(obj, head)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if dataclasses.is_dataclass(current) and isinstance(value, dict):
        for k, v in value.items():
            _set(current, k, v, f"{full}.{k}")
        return
    setattr(obj, head, value)


def parse_value(text: str) -> Any:
    """A TOML literal, or the bare text as a string.

    >>> parse_value("3e-4"), parse_value("true"), parse_value("gelu"), parse_value("[1, 2]")
    (0.0003, True, 'gelu', [1, 2])
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` overrides (dotted keys for nested fields) in order."""
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override {item!r} is not key=value, e.g. schedule.lr=3e-4")
        key, value = key.strip(), parse_value(value.strip())
        if key == "model.model_type" and cfg.model.get("model_type") != value:
            # Another architecture: the old one's fields (a GPT's n_head for an LSTM) do not
            # apply, so start its table afresh. Give model.model_type before other model.* keys.
            cfg.model = {}
        _set(cfg, key, value, key)
    return cfg


CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def builtin_configs() -> list[str]:
    """Names of the example configs shipped in lmstack/configs (usable as --config NAME)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.toml"))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """TrainConfig from an optional TOML file (or a built-in config name) plus overrides."""
    cfg = TrainConfig()
    if path is not None and not Path(path).exists() and str(path) in builtin_configs():
        path = CONFIGS_DIR / f"{path}.toml"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; give a TOML path or one of "
                              f"the built-in configs {builtin_configs()}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        if "model" in data:  # a file's [model] table replaces the default model, not merges
            cfg.model = {}
        for key, value in data.items():
            _set(cfg, key, value, key)
    return apply_overrides(cfg, list(overrides)).check()
