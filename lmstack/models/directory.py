"""The model directory: how a model lives on disk, for every command that takes `--model DIR`.

    DIR/config.json        the architecture (`model.config.to_dict()`, with `model_type`)
    DIR/model.safetensors  the weights (neural models), or DIR/ngram.npz (the n-gram counts)
    DIR/tokenizer.json     the tokenizer the ids come from
    DIR/generation_config.json, DIR/tokenizer_config.json   (optional) the end-of-sequence ids,
                           and the chat template with its bos/eos strings, as Hugging Face
                           writes them

A training run adds `train_state.pt` and `log.jsonl` (lmstack.train.checkpoint). Every file is
written to a temporary name and renamed, so a reader never sees a half-written one.

Opening a model goes through a registry of formats (`FORMATS`). This file holds our own ones
(the n-gram and the plain directory above); the others live with the code that understands them
and register from there: a Hugging Face directory (lmstack/interop/hf.py), a quantized directory
(lmstack/infer/quantize.py: our config with a "quantization" entry and int8/int4 tensors).
They are declared as `lmstack.model_formats` entry points in pyproject.toml and loaded on first
use, so the models layer opens every format without importing the layers above it.

    >>> import tempfile
    >>> from lmstack.models import build_model
    >>> model = build_model({"model_type": "gru", "vocab_size": 8, "n_embd": 4, "hidden_size": 4})
    >>> d = save_model(tempfile.mkdtemp(), model)
    >>> sorted(p.name for p in d.iterdir())
    ['config.json', 'model.safetensors']
    >>> find_format(d).name
    'lmstack'
    >>> loaded = load_model(d)
    >>> all((a == b).all() for a, b in zip(model.state_dict().values(),
    ...                                    loaded.state_dict().values()))
    True
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from lmstack.atomic import atomic_open, atomic_write_json
from lmstack.errors import ConfigError
from lmstack.models.installed import resolve_model
from lmstack.models.ngram import NGramLM
from lmstack.models.registry import build_model
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.chat_template import ChatTemplate

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
NGRAM = "ngram.npz"
TOKENIZER = "tokenizer.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
ENTRY_POINTS = "lmstack.model_formats"  # the pyproject.toml group formats register in


def save_model(directory: str | os.PathLike, model: torch.nn.Module) -> Path:
    """Write config.json and the weights into `directory` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(model, NGramLM):
        with atomic_open(d / NGRAM) as f:
            model.save(f.name)
    else:
        with atomic_open(d / WEIGHTS) as f:
            # safetensors' save_model drops the duplicate of tied (shared) tensors.
            st_save_model(model, f.name)
    config = model.config.to_dict()
    if getattr(model, "quantization", None):  # lmstack/infer/quantize.py
        config["quantization"] = model.quantization
    atomic_write_json(d / CONFIG, config)
    return d


def read_config(directory: str | os.PathLike) -> dict:
    """The config.json dict of a model directory, with errors naming the file."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise ConfigError(f"{directory} is not a model directory: it has no {CONFIG}; "
                          "train one with `lmstack train` or point --model at one")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the file is corrupt") from None


def load_weights(model: torch.nn.Module, directory: str | os.PathLike,
                 device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load DIR/model.safetensors into a built model; every tensor must match (eval mode)."""
    d = Path(directory)
    path = d / WEIGHTS
    if not path.exists():
        raise ConfigError(f"{d} has no {WEIGHTS}; the model directory is incomplete")
    try:
        missing, unexpected = st_load_model(model, str(path), strict=False, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ConfigError(f"{path} cannot be read as safetensors weights for this config ({e}); "
                          "the file is corrupt or belongs to another model") from None
    if missing or unexpected:
        raise ConfigError(f"{path} does not match {d / CONFIG}: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")
    return model.to(device).eval()


# ---- the registry of formats ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelFormat:
    """One way a model is stored, and how to open it.

    `detect(path)` says whether a path (a directory, or a file for single-file formats) holds
    a model in this format; `load(path, device)` builds it. `eos_ids(path)` gives the end of
    sequence ids the format records (None: the tokenizer's <|endoftext|>), and `tokenizer(path)`
    the tokenizer (None: DIR/tokenizer.json), `chat_config(path)` the chat template and its
    bos/eos strings (None: DIR/tokenizer_config.json) — for single-file formats that carry them.
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, str | torch.device], torch.nn.Module]
    eos_ids: Callable[[Path], list[int]] | None = None
    tokenizer: Callable[[Path], Tokenizer | None] | None = None
    chat_config: Callable[[Path], dict] | None = None


def _is_ngram(path: Path) -> bool:
    return (path / CONFIG).is_file() and read_config(path).get("model_type") == "ngram"


def _load_ngram(path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    if not (path / NGRAM).exists():
        raise ConfigError(f"{path} has an n-gram config but no {NGRAM}")
    return NGramLM.load(path / NGRAM).eval()  # counts, not tensors: no device


def _load_plain(path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    return load_weights(build_model(read_config(path)), path, device)


# Ours, asked last: a format from above may extend our directory (quantized: our config plus a
# "quantization" entry), so the plain directory is the fallback for any config.json.
BUILTIN = [ModelFormat("ngram", _is_ngram, _load_ngram),
           ModelFormat("lmstack", lambda path: (path / CONFIG).is_file(), _load_plain)]
FORMATS: dict[str, ModelFormat] = {}  # registered from above (entry points, or register_format)


def register_format(fmt: ModelFormat) -> ModelFormat:
    """Add a format (asked before the built-in ones); returns it, to use as `FORMAT = ...`."""
    FORMATS[fmt.name] = fmt
    return fmt


@cache
def _load_entry_points() -> None:
    """Register the formats pyproject.toml declares, once per process."""
    for ep in entry_points(group=ENTRY_POINTS):
        FORMATS.setdefault(ep.name, ep.load())  # ep.load() imports the module that defines it


def formats() -> list[ModelFormat]:
    """Every format, in the order they are asked: registered ones by name, then ours."""
    _load_entry_points()
    return [FORMATS[name] for name in sorted(FORMATS)] + BUILTIN


def find_format(path: str | os.PathLike) -> ModelFormat:
    """The format of a model directory (or file, or short name): the first whose `detect` says
    yes."""
    p = resolve_model(path)
    found = next((f for f in formats() if f.detect(p)), None)
    if found is None:
        if not p.is_file():
            read_config(p)  # raises: not a model directory, it has no config.json
        names = ", ".join(f.name for f in formats())
        raise ConfigError(f"{p} is in no model format lmstack knows ({names}); formats from "
                          f"above the models layer register as '{ENTRY_POINTS}' entry points: "
                          "reinstall lmstack (`pip install -e .`) if one is missing")
    return found


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Open a model in any registered format (ours, n-gram, quantized, Hugging Face; eval mode)."""
    p = resolve_model(directory)
    model = find_format(p).load(p, device)
    check_finite(model, p)
    return model


def nonfinite_weight(model: torch.nn.Module) -> str | None:
    """The name of the first floating-point parameter or buffer holding NaN or inf, else None
    (under FSDP each rank checks its own shards)."""
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        local = t.to_local() if hasattr(t, "to_local") else t  # an FSDP DTensor: this rank's shard
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            return name
    return None


def check_finite(model: torch.nn.Module, where: str | os.PathLike) -> None:
    """ConfigError if a weight is NaN or infinite: what a diverged run leaves, which would only
    generate garbage ids (every command that opens a model gets this check)."""
    name = nonfinite_weight(model)
    if name is not None:
        raise ConfigError(f"{where} holds non-finite weights ({name} has NaN or inf): the "
                          "training run that wrote them diverged. Train again with a lower "
                          "schedule.lr or gradient clipping (optim.grad_clip=1.0)")


def model_eos_ids(directory: str | os.PathLike) -> list[int] | None:
    """End-of-sequence ids the model records (its format's, else DIR/generation_config.json),
    else None."""
    p = resolve_model(directory)
    fmt = find_format(p)
    if fmt.eos_ids:
        return fmt.eos_ids(p) or None
    eos = _read_json(p / GENERATION_CONFIG).get("eos_token_id")
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])] if eos is not None else None


def model_chat_config(directory: str | os.PathLike) -> dict:
    """The model's chat template and the bos/eos strings it may write: {"chat_template",
    "bos_token", "eos_token"}, each key only when recorded (its format's, else
    DIR/tokenizer_config.json or DIR/chat_template.jinja)."""
    p = resolve_model(directory)
    fmt = find_format(p)
    if fmt.chat_config is not None:
        return fmt.chat_config(p)
    config = _read_json(p / TOKENIZER_CONFIG)
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates; "default" is the chat one
        template = {t.get("name"): t.get("template") for t in template
                    if isinstance(t, dict)}.get("default")
    if not isinstance(template, str) and (p / CHAT_TEMPLATE).is_file():
        template = (p / CHAT_TEMPLATE).read_text(encoding="utf-8")
    found = {"chat_template": template if isinstance(template, str) else None,
             "bos_token": _token_text(config.get("bos_token")),
             "eos_token": _token_text(config.get("eos_token"))}
    return {k: v for k, v in found.items() if v}


def model_chat_template(directory: str | os.PathLike) -> ChatTemplate:
    """The model's chat template (`model_chat_config`), ready to render; ChatML when it has none."""
    return ChatTemplate.from_config(model_chat_config(directory))


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    """A JSON object file's dict, {} when absent; a corrupt one is an error naming it."""
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the file is corrupt") from None
    return found if isinstance(found, dict) else {}


def save_companions(src: str | os.PathLike, dst: str | os.PathLike,
                    tokenizer: Tokenizer | None = None) -> None:
    """Write what a model directory keeps beside its weights — tokenizer.json, the eos ids
    (generation_config.json) and the chat template (tokenizer_config.json) — read from any
    model `src` (its `tokenizer` if the caller has it already), into the new directory `dst`
    (quantize and convert keep them this way)."""
    d = Path(dst)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(src)
    if tokenizer is not None:
        tokenizer.save(d / TOKENIZER)
    if eos := model_eos_ids(src):
        atomic_write_json(d / GENERATION_CONFIG, {"eos_token_id": eos if len(eos) > 1 else eos[0]})
    if chat := model_chat_config(src):
        atomic_write_json(d / TOKENIZER_CONFIG, chat)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer | None:
    """The model's tokenizer: its format's, else DIR/tokenizer.json, else None (ids only)."""
    p = resolve_model(directory)
    fmt = find_format(p)
    if fmt.tokenizer is not None:
        return fmt.tokenizer(p)
    return Tokenizer.load(p / TOKENIZER) if (p / TOKENIZER).exists() else None
