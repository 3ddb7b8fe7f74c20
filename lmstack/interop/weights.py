"""Hugging Face weight names and layouts <-> lmstack's, streamed tensor by tensor.

GPT-2 (`transformer.h.{i}.…`): its `Conv1D` layers store weights as (in, out), the transpose of
`nn.Linear`, and q, k, v are one fused `c_attn` matrix whose columns are q | k | v. Llama,
Mistral and Qwen2 (`model.layers.{i}.…`) already use `nn.Linear` and the same rotate-half RoPE
layout as ours, so only the names change.

Loading streams: the model is built on the `meta` device (no memory), then each tensor is read
from the safetensors file(s) (memory-mapped by `safe_open`), converted, and assigned to its
parameter. At no point are there two full copies of the weights in RAM. A sharded checkpoint
(`model.safetensors.index.json`) is read shard by shard.

Run the tests: `pytest tests/interop`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from lmstack.errors import ConfigError
from lmstack.models.gpt import GPTConfig

LLAMA = [  # (HF pattern, ours); {i} is the layer
    ("model.embed_tokens.weight", "wte.weight"),
    ("model.norm.weight", "ln_f.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.ln_1.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.ln_2.weight"),
    *[(f"model.layers.{{i}}.self_attn.{p}.{w}", f"layers.{{i}}.attn.{p}.{w}")
      for p in ("q_proj", "k_proj", "v_proj", "o_proj") for w in ("weight", "bias")],
    *[(f"model.layers.{{i}}.self_attn.{p}.weight", f"layers.{{i}}.attn.{p}.weight")
      for p in ("q_norm", "k_norm")],  # Qwen3's per-head QK-norm
    *[(f"model.layers.{{i}}.mlp.{p}.weight", f"layers.{{i}}.mlp.{p}.weight")
      for p in ("gate_proj", "up_proj", "down_proj")],
]

GPT2 = [  # (HF name, ours, transpose?) — c_attn is handled apart (split into q, k, v)
    ("wte.weight", "wte.weight", False),
    ("wpe.weight", "position.wpe.weight", False),
    ("ln_f.weight", "ln_f.weight", False), ("ln_f.bias", "ln_f.bias", False),
    *[(f"h.{{i}}.{ln}.{w}", f"layers.{{i}}.{ln}.{w}", False)
      for ln in ("ln_1", "ln_2") for w in ("weight", "bias")],
    ("h.{i}.attn.c_proj.weight", "layers.{i}.attn.o_proj.weight", True),
    ("h.{i}.attn.c_proj.bias", "layers.{i}.attn.o_proj.bias", False),
    ("h.{i}.mlp.c_fc.weight", "layers.{i}.mlp.up_proj.weight", True),
    ("h.{i}.mlp.c_fc.bias", "layers.{i}.mlp.up_proj.bias", False),
    ("h.{i}.mlp.c_proj.weight", "layers.{i}.mlp.down_proj.weight", True),
    ("h.{i}.mlp.c_proj.bias", "layers.{i}.mlp.down_proj.bias", False),
    ("lm_head.weight", "lm_head.weight", False),
]


def _regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


LLAMA_RE = [(_regex(h), o) for h, o in LLAMA]
GPT2_RE = [(_regex(h), o, t) for h, o, t in GPT2]
C_ATTN = re.compile(r"h\.(?P<i>\d+)\.attn\.c_attn\.(?P<w>weight|bias)$")
GPT2_SKIP = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")  # old causal-mask buffers


def read_json(path: Path) -> dict:
    """A JSON object from a file, with errors naming the file."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; a model directory needs it") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path} holds a JSON {type(d).__name__}, not an object")
    return d


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of an HF directory: one file, or the shards its index lists."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ConfigError(f"{index} is not a valid safetensors index ({e})") from None
        missing = [s for s in shards if not (directory / s).exists()]
        if missing:
            raise ConfigError(f"{index} lists shards that are missing: {missing}")
        return [directory / s for s in shards]
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    if (directory / "pytorch_model.bin").exists():
        raise ConfigError(f"{directory} holds pytorch_model.bin (pickle) weights only; convert "
                          "them to model.safetensors with transformers' save_pretrained first")
    raise ConfigError(f"{directory} has no model.safetensors or model.safetensors.index.json")


def hf_tensors(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of an HF checkpoint, one at a time."""
    for path in safetensors_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{path} cannot be read as safetensors ({e}); the file is "
                              "corrupt or truncated") from None


def to_lmstack(name: str, tensor: torch.Tensor, family: str, cfg: GPTConfig) -> list[tuple[str, torch.Tensor]]:
    """Our (name, tensor) pairs for one HF tensor; [] for buffers we do not keep."""
    if family == "gpt2":
        name = name.removeprefix("transformer.")
        if GPT2_SKIP.match(name):
            return []
        m = C_ATTN.match(name)
        if m:
            parts = tensor.split(cfg.n_embd, dim=-1)  # (in, 3·out) columns, or a (3·out,) bias
            # Own storage for each part: slices of one tensor cannot be saved separately.
            return [(f"layers.{m['i']}.attn.{p}.{m['w']}",
                     (t.t() if m["w"] == "weight" else t).clone(memory_format=torch.contiguous_format))
                    for p, t in zip(("q_proj", "k_proj", "v_proj"), parts)]
        for rx, ours, transpose in GPT2_RE:
            m = rx.match(name)
            if m:
                return [(ours.format(**m.groupdict()), tensor.t() if transpose else tensor)]
    else:
        if name.endswith("rotary_emb.inv_freq"):
            return []  # derived from rope_theta, recomputed
        for rx, ours in LLAMA_RE:
            m = rx.match(name)
            if m:
                return [(ours.format(**m.groupdict()), tensor)]
    raise ConfigError(f"unexpected tensor {name!r} in a {family} checkpoint; it does not belong "
                      "to the architecture in config.json")


def from_lmstack(state: dict[str, torch.Tensor], family: str, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """HF-named tensors for our state dict (tied lm_head written once, as HF expects)."""
    out: dict[str, torch.Tensor] = {}
    if family == "gpt2":
        for i in range(cfg.n_layer):
            for w in ("weight", "bias"):
                parts = [state[f"layers.{i}.attn.{p}.{w}"] for p in ("q_proj", "k_proj", "v_proj")]
                fused = torch.cat([p.t() for p in parts], dim=1) if w == "weight" else torch.cat(parts)
                out[f"transformer.h.{i}.attn.c_attn.{w}"] = fused
        for hf, ours, transpose in GPT2:
            for i in range(cfg.n_layer) if "{i}" in hf else [None]:
                key = ours.format(i=i)
                if key in state and not (hf == "lm_head.weight" and cfg.tie_embeddings):
                    name = hf if hf == "lm_head.weight" else "transformer." + hf.format(i=i)
                    out[name] = state[key].t() if transpose else state[key]
    else:
        for hf, ours in LLAMA:
            for i in range(cfg.n_layer) if "{i}" in hf else [None]:
                key = ours.format(i=i)
                if key in state and not (hf == "lm_head.weight" and cfg.tie_embeddings):
                    out[hf.format(i=i)] = state[key]
    return {k: v.contiguous() for k, v in out.items()}


def assign_weights(model: torch.nn.Module, loaded: dict[str, torch.Tensor], expected: dict,
                   tie: bool) -> list[str]:
    """Assign `loaded` (our names) to `model` in place, tying lm_head to wte when `tie`, and
    return []; or, if some tensor of `expected` (the built model's state dict) is not loaded,
    assign nothing and return their names (none may stay uninitialized)."""
    if tie:
        loaded.pop("lm_head.weight", None)  # one matrix: tied again below
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(loaded))
    if missing:
        return missing
    model.load_state_dict(loaded, strict=False, assign=True)
    if tie:
        model.lm_head.weight = model.wte.weight
    return []
