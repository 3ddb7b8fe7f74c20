"""Training configuration: one dataclass tree, loadable from TOML, overridable per field.

    lmstack train --config configs/quickstart.toml --set schedule.lr=3e-4 model.n_layer=6

A TOML file has top-level keys for `TrainConfig` and tables `[model]` (a model `config.json`
dict: `model_type` plus that model's fields), `[optim]` and `[schedule]`. Overrides are
`dotted.key=value` with the value parsed as a TOML literal (so `3e-4`, `true`, `"gelu"` and
`[1, 2]` work; a bare word is a string; `none` unsets an optional field). Every value is held to
its field's type and to its range in `RULES` as it is parsed (fields.py), so `steps=abc` or
`max_minutes=-1` is a one-line error naming the field, the value and what is allowed.
Overriding `model.model_type` with another type starts an empty model table (the defaults of
the new model apply). The resolved config is written next to the checkpoint
(`train_config.json`), so a run can always be reproduced.

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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lmstack.errors import ConfigError
from lmstack.models import config_from_dict
from lmstack.train.fields import Check, Matches, OneOf, Range, check, check_tree, parse, parse_value
from lmstack.train.optim import OptimConfig
from lmstack.train.qat import check_qat
from lmstack.train.schedule import DECAYS, ScheduleConfig

__all__ = ["RULES", "TrainConfig", "apply_overrides", "load_config", "parse_value"]


def _default_model() -> dict[str, Any]:
    return {"model_type": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128}


# What each field allows beyond its type (fields.py checks the type of every field). Checks
# across fields (min_lr <= lr, QAT's group size) stay in the configs' check() methods; the
# model table is checked by its own config class (lmstack.models).
_STEP = Range(0, 1, hi_open=True)
RULES: dict[str, Check] = {
    "data": Matches(r"(?s).+", "a path"), "tokenizer": Matches(r"(?s).+", "a path or none"),
    "out_dir": Matches(r"(?s).+", "a path"),
    "batch_size": Range(1), "block_size": Range(1), "grad_accum": Range(1), "steps": Range(1),
    "max_minutes": Range(0, lo_open=True, hint="minutes of wall time; none for no limit"),
    "precision": OneOf(("fp32", "bf16", "fp16")),
    "device": Matches(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:N"),
    "parallel": OneOf(("ddp", "fsdp")),
    "threads": Range(1, hint="none: torch's default"),
    "seed": Range(0, 2**32, hi_open=True, hint="numpy's seed range"),
    "eval_every": Range(0, hint="0 disables validation"), "eval_batches": Range(1),
    "target_val_loss": Range(0),
    "sample_every": Range(0, hint="0 disables samples"), "save_every": Range(1),
    "log_every": Range(1),
    "scheduled_sampling": Range(0, 1, hint="a probability"),
    "optim.name": OneOf(("adamw", "muon")),
    "optim.weight_decay": Range(0), "optim.beta1": _STEP, "optim.beta2": _STEP,
    "optim.eps": Range(0, lo_open=True), "optim.grad_clip": Range(0, hint="0 disables clipping"),
    "optim.momentum": _STEP,
    "schedule.lr": Range(0, lo_open=True), "schedule.min_lr": Range(0),
    "schedule.warmup_steps": Range(0), "schedule.total_steps": Range(1),
    "schedule.kind": OneOf(tuple(DECAYS)),
    "schedule.decay_fraction": Range(0, 1, lo_open=True),
}


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults train a small GPT on `data`."""

    rules: ClassVar[dict[str, Check]] = RULES  # each field's allowed values (a subclass adds its own)

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
        check_tree(self, self.rules)  # every field: its type and its rule's range
        self.optim.check()
        self.schedule.check()
        self.check_model()
        if self.target_val_loss is not None and not self.eval_every:
            raise ConfigError("target_val_loss needs validation to stop on: set eval_every "
                              "to a number of steps, e.g. eval_every=100")
        check_qat(self.qat_bits, self.qat_group_size)
        return self

    def check_model(self) -> None:
        """The model table, checked by its own config class (the tokenizer sets vocab_size later)."""
        config_from_dict({"vocab_size": 256, **self.model})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for train_config.json)."""
        return dataclasses.asdict(self)


def _set(obj: Any, dotted: str, value: Any, full: str, raw: str | None = None,
         rules: dict[str, Check] = RULES) -> None:
    """Set field `dotted` of obj to `value`, held to its type and `rules`; from `--set`, `raw`
    is the text as given, parsed as that field's type (`out_dir=2024` stays text)."""
    head, _, rest = dotted.partition(".")
    if isinstance(obj, dict):  # the model table: its config class checks it (TrainConfig.check)
        if rest:
            _set(obj.setdefault(head, {}), rest, value, full, rules=rules)
        else:
            obj[head] = value
        return
    if not dataclasses.is_dataclass(obj):  # `steps.x=1`, `model.n_layer.x=1`
        raise ConfigError(f"unknown setting {full!r}: {full[:-len(dotted) - 1]} is a single "
                          "value, not a table of settings")
    names = [f.name for f in dataclasses.fields(obj)]
    if head not in names:
        raise ConfigError(
            f"unknown setting {full!r}: {type(obj).__name__} has no field {head!r} "
            f"(fields: {', '.join(names)})"
        )
    current = getattr(obj, head)
    if rest:
        _set(current, rest, value, full, raw, rules)
        return
    kind = typing.get_type_hints(type(obj))[head]
    if raw is not None:  # a table (`optim={beta1=0.8}`) is a TOML literal; a value has its type
        value = parse_value(raw) if dataclasses.is_dataclass(current) else parse(raw, kind, full)
    if dataclasses.is_dataclass(current) and isinstance(value, dict):
        for k, v in value.items():
            _set(current, k, v, f"{full}.{k}", rules=rules)
        return
    setattr(obj, head, check(value, kind, full, rules.get(full)))


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` overrides (dotted keys for nested fields) in order."""
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value, e.g. schedule.lr=3e-4")
        key, raw = key.strip(), raw.strip()
        if key == "model.model_type" and cfg.model.get("model_type") != parse_value(raw):
            # Another architecture: the old one's fields (a GPT's n_head for an LSTM) do not
            # apply, so start its table afresh. Give model.model_type before other model.* keys.
            cfg.model = {}
        _set(cfg, key, parse_value(raw), key, raw, cfg.rules)
    return cfg


CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def builtin_configs() -> list[str]:
    """Names of the example configs shipped in lmstack/configs (usable as --config NAME)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.toml"))


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML config file, with errors that say what the path is instead."""
    p = Path(path)
    names = f"one of the built-in configs {builtin_configs()}"
    if p.is_dir():
        raise ConfigError(f"config {p} is a directory, not a TOML file; give a .toml file or "
                          f"{names}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; give a TOML path or {names}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text file (not UTF-8); give a TOML file "
                          f"or {names}") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror}); give a readable TOML "
                          "file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                kind: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """A `kind` config (TrainConfig, or a subclass such as SFTConfig) from an optional TOML file
    (or a built-in config name) plus overrides."""
    cfg = kind()
    if path is not None and not Path(path).exists() and str(path) in builtin_configs():
        path = CONFIGS_DIR / f"{path}.toml"
    if path is not None:
        data = read_toml(path)
        if "model" in data:  # a file's [model] table replaces the default model, not merges
            cfg.model = {}
        try:
            for key, value in data.items():
                _set(cfg, key, value, key, rules=cfg.rules)
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    return apply_overrides(cfg, list(overrides)).check()
