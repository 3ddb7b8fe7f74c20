"""Run and export Hugging Face checkpoints: import a local HF directory into our GPT (or, for
BERT, our Encoder: bert.py), export any lmstack GPT of a supported family (or BERT-shaped
encoder) back to one, and `lmstack convert` between the two.

    lmstack convert --src ~/models/SmolLM-135M --dst runs/smol --to lmstack
    lmstack convert --src runs/quickstart --dst runs/quickstart-hf --to hf
    lmstack generate --model ~/models/SmolLM-135M --prompt "Once upon a time"   # on the fly

An HF directory holds `config.json`, `model.safetensors` (or shards listed in
`model.safetensors.index.json`), `tokenizer.json`, and maybe `generation_config.json` (the end
of sequence ids) and `tokenizer_config.json` (the chat template). Which architectures and config
fields are supported: config.py. How weights are renamed and streamed: weights.py. Tokenizers:
lmstack/tokenizer/hf.py (byte-level BPE only; SentencePiece-style files are refused).

Run the tests: `pytest tests/interop`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmstack.atomic import atomic_open, atomic_write_json
from lmstack.errors import ConfigError
from lmstack.interop.bert import convert_bert, is_bert_config, is_encoder_dir, load_bert
from lmstack.interop.config import config_from_hf, config_to_hf, hf_family, hf_model_type
from lmstack.interop.weights import assign_weights, from_lmstack, hf_tensors, read_json, to_lmstack
from lmstack.models.directory import ModelFormat
from lmstack.models.encoder import Encoder
from lmstack.models.gpt import GPT
from lmstack.models.positions import POSITIONS

EXTRA_FILES = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json")


def is_hf_dir(directory: str | os.PathLike) -> bool:
    """Whether a directory's config.json is a Hugging Face config of a family we import."""
    path = Path(directory) / "config.json"
    if not path.exists():
        return False
    config = read_json(path)
    return hf_model_type(config) is not None or is_bert_config(config)


def load_hf_model(directory: str | os.PathLike, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> GPT | Encoder:
    """Our model with the weights of a local HF checkpoint, streamed tensor by tensor: a GPT, or
    an Encoder for BERT (bert.py)."""
    d = Path(directory)
    hf_config = read_json(d / "config.json")
    if is_bert_config(hf_config):
        return load_bert(d, hf_config, dtype, device)
    cfg = config_from_hf(hf_config, source=str(d / "config.json"))
    family = "gpt2" if hf_config["model_type"] == "gpt2" else "llama"
    with torch.device("meta"):
        model = GPT(cfg)  # shapes only: no memory until the real tensors arrive
    expected = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for name, tensor in hf_tensors(d):
        for ours, value in to_lmstack(name, tensor, family, cfg):
            if ours not in expected:
                raise ConfigError(f"{d}: tensor {name!r} ({ours}) is not in the model config.json "
                                  "describes (a bias or head the config does not have?)")
            if tuple(value.shape) != tuple(expected[ours].shape):
                raise ConfigError(f"{d}: tensor {name!r} has shape {tuple(value.shape)} but "
                                  f"config.json implies {tuple(expected[ours].shape)}")
            loaded[ours] = value.to(device=device, dtype=dtype).contiguous()
    if missing := assign_weights(model, loaded, expected, cfg.tie_embeddings):
        raise ConfigError(f"{d}: the checkpoint lacks {len(missing)} tensors config.json needs, "
                          f"e.g. {missing[:4]}; it is incomplete or for another architecture")
    if any(b.is_meta for b in model.position.buffers()):
        with torch.device(device):  # derived, non-persistent buffers (RoPE, ALiBi): recomputed
            model.position = POSITIONS[cfg.position](cfg)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ConfigError(f"{d}: no weights for {left[:4]}")
    return model.eval()


def eos_token_ids(directory: str | os.PathLike) -> list[int]:
    """End-of-sequence ids from generation_config.json (else config.json), maybe empty."""
    d = Path(directory)
    for name in ("generation_config.json", "config.json"):
        if (d / name).exists():
            eos = read_json(d / name).get("eos_token_id")
            if eos is not None:
                return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return []


def chat_template(directory: str | os.PathLike) -> str | None:
    """The Jinja chat template from tokenizer_config.json, if the directory has one."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.exists():
        return None
    template = read_json(path).get("chat_template")
    return template if isinstance(template, str) else None


def export_hf(model: GPT, tokenizer, out: str | os.PathLike, eos_ids: list[int] | None = None,
              extra_from: str | os.PathLike | None = None) -> Path:
    """Write an HF directory that `AutoModelForCausalLM.from_pretrained` and
    `tokenizers.Tokenizer.from_file` load, with the same logits and ids."""
    from lmstack.tokenizer import save_hf

    cfg = model.config
    family = hf_family(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    tensors = from_lmstack(state, "gpt2" if family == "gpt2" else "llama", cfg)
    with atomic_open(out / "model.safetensors") as f:
        save_file(tensors, f.name, metadata={"format": "pt"})
    hf_config = config_to_hf(cfg)
    if tokenizer is not None:
        save_hf(tokenizer, out / "tokenizer.json")
        if eos_ids is None and "<|endoftext|>" in tokenizer.special_tokens:
            eos_ids = [tokenizer.special_tokens["<|endoftext|>"]]
    if eos_ids:
        hf_config["eos_token_id"] = hf_config["bos_token_id"] = eos_ids[0]
        atomic_write_json(out / "generation_config.json", {"eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0]})
    hf_config["torch_dtype"] = "float32"
    atomic_write_json(out / "config.json", hf_config)
    if extra_from is not None:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (Path(extra_from) / name).exists():
                with atomic_open(out / name) as f:
                    shutil.copyfile(Path(extra_from) / name, f.name)
    return out


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str) -> Path:
    """Convert a model directory: HF -> lmstack (`to="lmstack"`) or lmstack -> HF (`to="hf"`)."""
    from lmstack.models.directory import load_model, save_model
    from lmstack.tokenizer import Tokenizer

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ConfigError("--src and --dst are the same directory; write the conversion elsewhere")
    if is_encoder_dir(src):
        return convert_bert(src, dst, to)  # a WordPiece tokenizer: its files are copied as they are
    tok_path = src / "tokenizer.json"
    tokenizer = Tokenizer.load(tok_path) if tok_path.exists() else None
    if to == "lmstack":
        if not is_hf_dir(src):
            raise ConfigError(f"{src} is not a Hugging Face directory of a supported family "
                              "(config.json model_type gpt2, llama, mistral, qwen2 or bert)")
        model = load_hf_model(src)
        save_model(dst, model)
        if tokenizer is not None:
            tokenizer.save(dst / "tokenizer.json")
        for name in EXTRA_FILES:
            if (src / name).exists():
                with atomic_open(dst / name) as f:
                    shutil.copyfile(src / name, f.name)
        return dst
    if to == "hf":
        model = load_model(src)
        if not isinstance(model, GPT):
            raise ConfigError(f"{src} holds a {type(model).__name__}; only GPT models export to HF")
        return export_hf(model, tokenizer, dst, eos_token_ids(src) or None, extra_from=src)
    raise ConfigError(f"--to must be 'lmstack' or 'hf', got {to!r}")


# ---- the model-directory format ---------------------------------------------------------------
# Registered from here (pyproject.toml's lmstack.model_formats entry points), so that
# models/directory.py's load_model (and so `--model` everywhere) opens a Hugging Face
# directory without the models layer importing interop.


def _looks_hf(path: Path) -> bool:
    """config.json written by transformers (an unsupported family then fails in config.py)."""
    config = path / "config.json"
    return config.is_file() and bool({"architectures", "transformers_version"} & set(read_json(config)))


def _load_hf(path: Path, device: str | torch.device = "cpu") -> GPT | Encoder:
    return load_hf_model(path, device=device)


FORMAT = ModelFormat("hf", detect=_looks_hf, load=_load_hf, eos_ids=eos_token_ids)
