"""Checkpoints: a training run's directory is a model directory plus what resuming needs.

    OUT/config.json, OUT/model.safetensors, OUT/tokenizer.json   the model (models/directory.py)
    OUT/train_state.pt     weights, optimizer, step, RNG states (one per rank), data position,
                           resolved config
    OUT/train_config.json  the resolved training config, for people
    OUT/log.jsonl          one JSON object per logged step

Resuming reads only `train_state.pt`, which holds the weights too, so what it restores is
always one consistent moment even if the process died between writing two files. Each file is
written to a temporary name, fsynced and renamed over the old one: a SIGKILL in the middle of a
save leaves the previous checkpoint intact (tests/train/test_kill.py kills runs mid-save).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmstack.data.outputs import check_out_dir
from lmstack.errors import ConfigError, DataError
from lmstack.models.directory import save_model
from lmstack.tokenizer import Tokenizer

STATE = "train_state.pt"
TRAIN_CONFIG = "train_config.json"
LOG = "log.jsonl"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Every random generator training draws from."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str | Path, *, model: torch.nn.Module, tokenizer: Tokenizer,
                    optimizer: torch.optim.Optimizer | dict | None, step: int, data_state: dict,
                    config: dict, extra: dict | None = None,
                    rng: list[dict[str, Any]] | None = None,
                    model_state: dict[str, torch.Tensor] | None = None,
                    write_model: Callable[[Path, torch.nn.Module], object] = save_model) -> Path:
    """Write the resumable state first, then the model directory files.

    `optimizer` is an optimizer or its state dict (the loop passes the name-keyed full state of
    distributed.full_optimizer_state); `rng` is every rank's `rng_state()` (default: this one's).
    A PEFT run passes `model_state` (its trained parameters alone: the frozen base is not
    copied into every checkpoint) and `write_model` (which writes its adapter).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = rng if rng is not None else [rng_state()]
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.state_dict()
    state = {
        "step": step,
        "model": model.state_dict() if model_state is None else model_state,
        "optimizer": optimizer,
        "rng": rng[0],
        "rng_ranks": rng,
        "data": data_state,
        "config": config,
        "extra": extra or {},
    }
    _atomic_torch_save(state, out / STATE)
    write_model(out, model)
    if not (out / "tokenizer.json").exists() or Tokenizer.load(out / "tokenizer.json") != tokenizer:
        tokenizer.save(out / "tokenizer.json")
    tmp = out / (TRAIN_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out / TRAIN_CONFIG)
    return out


def rng_of_rank(state: dict[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """The RNG state this rank saved; rank 0's if the run had another number of ranks."""
    ranks = state.get("rng_ranks") or [state["rng"]]
    return ranks[rank] if len(ranks) == world_size else ranks[0]


def remove_stale_temps(out_dir: str | Path) -> None:
    """Delete temp files a killed save left behind (call before this run writes any)."""
    for path in Path(out_dir).glob(f"{STATE}.tmp*"):
        path.unlink(missing_ok=True)


def load_train_state(out_dir: str | Path) -> dict[str, Any]:
    """The saved training state of a run, with clear errors when there is none or it is bad."""
    path = Path(out_dir) / STATE
    if not path.exists():
        raise ConfigError(f"cannot resume: {path} does not exist; train without --resume first")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many kinds for a damaged pickle/zip
        raise ConfigError(f"cannot resume: {path} is unreadable ({type(e).__name__}: {e}); "
                          "delete it to start over") from None


def load_model_state(model: torch.nn.Module, state: dict[str, Any], model_config: dict,
                     path: str | Path, partial: bool = False) -> None:
    """Load a checkpoint's weights into `model`, or say plainly that another architecture
    (`state`'s config) made them than the one `model_config` (this run's `[model]`) builds.
    `partial`: the checkpoint holds the trained parameters alone (PEFT), each of which must
    exist in `model`."""
    try:
        unexpected = model.load_state_dict(state["model"], strict=not partial).unexpected_keys
        if unexpected:
            raise RuntimeError(f"unexpected {unexpected[:3]}")
    except RuntimeError:  # missing/unexpected names or other shapes: a screen of them, not a cause
        saved = (state.get("config") or {}).get("model") or {}
        raise ConfigError(
            f"cannot resume: {path} was made by another architecture than this config builds "
            f"({_model_difference(saved, model_config)}); give the new model its own out_dir "
            "(--set out_dir=runs/NEW), or resume with the checkpoint's own model settings "
            f"({Path(path).with_name(TRAIN_CONFIG)})") from None


def _model_difference(saved: dict, now: dict) -> str:
    """How two `[model]` tables differ, naming both sides.

    >>> _model_difference({"model_type": "gpt", "n_layer": 4}, {"model_type": "lstm"})
    'checkpoint: gpt model, config: lstm model'
    >>> _model_difference({"model_type": "lstm", "hidden_size": 128}, {"model_type": "lstm", "hidden_size": 256})
    'checkpoint: lstm model with hidden_size=128, config: hidden_size=256'
    """
    kind, new_kind = saved.get("model_type", "gpt"), now.get("model_type", "gpt")
    if kind != new_kind or not saved:
        return f"checkpoint: {kind} model, config: {new_kind} model"
    keys = [k for k in sorted(saved.keys() | now.keys()) if saved.get(k) != now.get(k)]
    if not keys:  # same table, other weights: e.g. the vocabulary of another tokenizer
        return f"checkpoint and config: {kind} model, with weights of other shapes (another tokenizer?)"
    show = lambda d: ", ".join(f"{k}={d.get(k, '(default)')}" for k in keys)
    return f"checkpoint: {kind} model with {show(saved)}, config: {show(now)}"


def append_log(out_dir: str | Path, record: dict) -> None:
    """Append one JSON line to log.jsonl (a torn last line is skipped by `read_log`)."""
    with open(Path(out_dir) / LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_log(out_dir: str | Path) -> list[dict]:
    """All complete records (JSON objects) of log.jsonl; none if it is missing or unreadable."""
    path = Path(out_dir) / LOG
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves at most one torn line
            if isinstance(record, dict):
                records.append(record)
    return records


def truncate_log(out_dir: str | Path, step: int) -> None:
    """Drop log records after `step` (a resumed run repeats them)."""
    kept = [r for r in read_log(out_dir) if r.get("step", 0) <= step]
    path = Path(out_dir) / LOG
    tmp = path.with_name(LOG + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def check_run_paths(data: str | os.PathLike, out_dir: str | os.PathLike,
                    tokenizer: str | os.PathLike | None = None) -> None:
    """Fail before building anything when the data directory is missing, or out_dir is a file
    or holds something other than a training run (its own tokenizer and data, as `lmstack
    quickstart` lays them out, may sit inside it)."""
    if not Path(data).is_dir():
        raise DataError(f"data directory {data} does not exist; make it with "
                        "`lmstack data prepare --out DIR`")
    inputs = [data] + ([tokenizer] if tokenizer else [])
    check_out_dir(out_dir, "out_dir", "a training run", [STATE, TRAIN_CONFIG, LOG], inputs)
