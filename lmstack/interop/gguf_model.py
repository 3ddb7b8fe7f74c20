"""Open a GGUF file as our GPT: Llama (SmolLM2, TinyLlama, Llama 2/3), Mistral and Qwen2.

    lmstack generate --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France"
    lmstack convert --src SmolLM2-135M-Instruct.Q4_1.gguf --dst runs/smol-q4
    lmstack convert --src SmolLM2-135M-Instruct.Q4_1.gguf --dst runs/smol --dequantize

The metadata (`llama.block_count`, `llama.embedding_length`, ...) is turned into the Hugging
Face config dict it stands for (`hf_config_from_gguf`), so the mapping onto `GPTConfig` and
every refusal of what we do not model live in one place, interop/config.py. Likewise tensor
names: GGUF's (`blk.3.attn_q.weight`) become HF's (`model.layers.3.self_attn.q_proj.weight`),
then ours through interop/weights.py.

Two facts of the file format are undone here:

- **The Q/K row permutation.** llama.cpp's converter (convert_hf_to_gguf.py, `permute`)
  reorders the rows of each head of q_proj and k_proj for architectures whose RoPE pairs
  adjacent features (llama, and Mistral, which it converts as llama): within a head of d rows,
  HF's rows i and d/2 + i (the two halves of rotate-half RoPE) become rows 2i and 2i + 1.
  `unpermute_rows` puts them back. Qwen2 runs rotate-half RoPE in llama.cpp (NEOX): no permute.
- **Quantization that is ours already.** Q4_1 stores groups of 32 weights as x = d q + m with
  q in 0..15, fp16 d and m: exactly our int4 group-32 with a float zero point (x = s q + z,
  lmstack/infer/quantize.py), so Q4_1 matrices load straight into `Int4Linear` (scales = d,
  zeros = m, the nibbles re-packed) — bit-exact on its reference path — unless
  `keep_quantized=False`. Every other type is dequantized to the dtype asked for (fp32 by
  default). A tied output (no `output.weight`) ties our head to the embedding, which stays a
  float matrix — except in a quantized model whose head (`output.weight`, or the tied
  `token_embd.weight`) is Q8_0: x = d q in blocks of 32 is our group-wise int8 (Int8Linear,
  group 32, scales = d), so the head reads the file's bytes (a quarter of fp32's: on SmolLM2
  28 MB a token instead of 113) while the embedding lookup keeps the exact float table. The
  head then stands apart from the table (`quantization["head"]` records it), as in any
  quantized model with a quantized head.

Which types are read: gguf_dequant.py. The file itself: gguf_file.py. Docs: docs/gguf.md.
Tests: `pytest tests/interop/test_gguf_model.py`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lmstack.atomic import output_dir
from lmstack.errors import ConfigError, TokenizerError
from lmstack.infer.quantize import Int8Linear, pack_int4, quantize_model
from lmstack.interop.config import config_from_hf
from lmstack.interop.gguf_dequant import check_supported, dequantize, q4_1_parts
from lmstack.interop.gguf_file import GGUFFile, TensorInfo, is_gguf, read_gguf
from lmstack.interop.weights import assign_weights, to_lmstack
from lmstack.models.directory import ModelFormat, save_companions, save_model
from lmstack.models.gpt import GPT, GPTConfig
from lmstack.models.positions import scale_inv_freq
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.gguf_vocab import chat_config_from_gguf, tokenizer_from_gguf

# GGUF general.architecture -> the HF model_type whose config it maps onto.
ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
PERMUTED = ("llama", "mistral")  # the architectures whose Q/K rows llama.cpp permutes
INT4_TYPE = "Q4_1"  # the ggml type that is our Int4Linear (group 32)
INT8_HEAD_TYPE = "Q8_0"  # the ggml type that is our group-wise Int8Linear (group 32)

NAMES = [  # (GGUF name, HF name); {i} is the layer
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    *[(f"blk.{{i}}.attn_{g}.{w}", f"model.layers.{{i}}.self_attn.{h}.{w}")
      for g, h in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "o_proj"))
      for w in ("weight", "bias")],
    *[(f"blk.{{i}}.ffn_{g}.weight", f"model.layers.{{i}}.mlp.{g}_proj.weight")
      for g in ("gate", "up", "down")],
]
NAMES_RE = [(re.compile(re.escape(g).replace(r"\{i\}", r"(?P<i>\d+)") + "$"), h) for g, h in NAMES]
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1's frequency factors, read into the config instead
# Llama 3.1 / 3.2 / 3.3 rope scaling, all but the factor (which the tensor gives).
LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}


# ---- metadata -> config ---------------------------------------------------------------------

def architecture(f: GGUFFile) -> str:
    """general.architecture, if it is one we load; ConfigError naming it otherwise."""
    arch = f.metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"{f.path}: GGUF architecture {arch!r} is not supported; lmstack "
                          f"loads {', '.join(ARCHITECTURES)} (llama covers SmolLM2, TinyLlama, "
                          "Llama 2/3)")
    return arch


def _key(f: GGUFFile, arch: str, name: str, default: Any = ConfigError) -> Any:
    """Metadata `{arch}.{name}`; a missing required one is a ConfigError."""
    value = f.metadata.get(f"{arch}.{name}", default)
    if value is ConfigError:
        raise ConfigError(f"{f.path}: the GGUF metadata lacks {arch}.{name}, which a {arch} model "
                          "needs; the file is incomplete or not a language model")
    if isinstance(value, list):  # per-layer values (other architectures): one for all is modelled
        if len(set(value)) != 1:
            raise ConfigError(f"{f.path}: {arch}.{name} differs between layers ({value[:4]}...); "
                              "lmstack models one value for every layer")
        value = value[0]
    return value


def hf_config_from_gguf(f: GGUFFile) -> dict:
    """The Hugging Face config dict a GGUF file's metadata stands for."""
    arch = architecture(f)
    if _key(f, arch, "expert_count", 0):
        raise ConfigError(f"{f.path}: a mixture of experts ({arch}.expert_count = "
                          f"{_key(f, arch, 'expert_count')}, e.g. Mixtral) is not supported")
    heads = _key(f, arch, "attention.head_count")
    width = _key(f, arch, "embedding_length")
    head_dim = _key(f, arch, "attention.key_length", width // heads)
    for name in ("attention.value_length", "rope.dimension_count"):
        if _key(f, arch, name, head_dim) != head_dim:
            raise ConfigError(f"{f.path}: {arch}.{name} = {_key(f, arch, name)} differs from the "
                              f"head size {head_dim}; lmstack rotates and attends whole heads")
    if "token_embd.weight" not in f.tensors:
        raise ConfigError(f"{f.path} has no token_embd.weight tensor; it is not a language model")
    d = {"model_type": ARCHITECTURES[arch], "vocab_size": f.tensors["token_embd.weight"].shape[0],
         "hidden_size": width, "intermediate_size": _key(f, arch, "feed_forward_length"),
         "num_hidden_layers": _key(f, arch, "block_count"), "num_attention_heads": heads,
         "num_key_value_heads": _key(f, arch, "attention.head_count_kv", heads),
         "head_dim": head_dim,
         "max_position_embeddings": _key(f, arch, "context_length", 2048),
         "rms_norm_eps": _key(f, arch, "attention.layer_norm_rms_epsilon", 1e-5),
         "rope_theta": _key(f, arch, "rope.freq_base", 10000.0),
         "tie_word_embeddings": "output.weight" not in f.tensors}
    scaling = _rope_scaling(f, arch, head_dim, d["rope_theta"])
    if scaling:
        d["rope_scaling"] = scaling
    if arch == "mistral":  # llama.cpp's own llama architecture ignores a window: so do we
        d["sliding_window"] = _key(f, arch, "attention.sliding_window", None)
    return d


def _rope_scaling(f: GGUFFile, arch: str, head_dim: int, theta: float) -> dict | None:
    """HF rope_scaling from `{arch}.rope.scaling.*` or Llama 3.1's rope_freqs tensor."""
    kind = _key(f, arch, "rope.scaling.type", "none")
    factor = _key(f, arch, "rope.scaling.factor", _key(f, arch, "rope.scale_linear", None))
    if kind == "none" and factor not in (None, 1.0):
        kind = "linear"  # the old key rope.scale_linear
    if ROPE_FREQS in f.tensors:
        return _llama3_scaling(f, head_dim, theta)
    if kind == "none":
        return None
    scaling = {"rope_type": kind, "factor": factor}  # config.py refuses the kinds we do not run
    original = _key(f, arch, "rope.scaling.original_context_length", None)
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    return scaling


def _llama3_scaling(f: GGUFFile, head_dim: int, theta: float) -> dict:
    """The Llama 3 rope scaling whose per-frequency factors rope_freqs.weight holds."""
    factors = dequantize(f.raw(ROPE_FREQS), f.tensors[ROPE_FREQS].type.name).reshape(-1)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaling = {**LLAMA3_ROPE, "factor": float(factors.max())}
    # llama.cpp divides each frequency by its factor: the factor is unscaled / scaled.
    expected = (inv_freq / scale_inv_freq(inv_freq, scaling)).numpy()
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-3):
        raise ConfigError(f"{f.path}: {ROPE_FREQS} holds RoPE frequency factors that are not "
                          f"Llama 3's (factor {scaling['factor']}, low 1, high 4, original "
                          "context 8192); lmstack cannot run this rope scaling")
    return scaling


def config_from_gguf(f: GGUFFile) -> GPTConfig:
    """Our GPTConfig for a GGUF file (through config.py's mapping of the HF config)."""
    return config_from_hf(hf_config_from_gguf(f), source=f"{f.path} (GGUF metadata)")


# ---- tensors --------------------------------------------------------------------------------

def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: rows (head, i, pair) back to (head, pair, i).

    >>> w = np.array([0, 2, 1, 3, 4, 6, 5, 7])  # two heads of 4 rows, as the converter wrote them
    >>> unpermute_rows(w, 2).tolist()
    [0, 1, 2, 3, 4, 5, 6, 7]
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class Entry:
    """One GGUF tensor and where it goes."""

    info: TensorInfo
    hf: str    # its Hugging Face name
    ours: str  # our state-dict name


def hf_name(name: str, where: Path) -> str:
    """The HF name of a GGUF tensor; ConfigError for one that is not part of these models."""
    for rx, hf in NAMES_RE:
        m = rx.match(name)
        if m:
            return hf.format(**m.groupdict())
    raise ConfigError(f"{where}: tensor {name!r} does not belong to a llama/mistral/qwen2 model "
                      "(an adapter, a vision tower, or another architecture?)")


def plan(f: GGUFFile, cfg: GPTConfig) -> list[Entry]:
    """Every tensor's destination, with every type and name checked before anything is built."""
    entries = []
    for name, info in f.tensors.items():
        if name == ROPE_FREQS:
            continue  # read into the config's rope scaling
        check_supported(info.type.name, f"{f.path}: tensor {name!r}")
        hf = hf_name(name, f.path)
        [(ours, _)] = to_lmstack(hf, torch.empty(0), "llama", cfg)  # the name only
        entries.append(Entry(info, hf, ours))
    return entries


def permuted_heads(entry: Entry, arch: str, cfg: GPTConfig) -> int | None:
    """The head count to un-permute a tensor's rows by (q_proj and k_proj of llama and
    mistral), else None."""
    if arch not in PERMUTED or not re.search(r"\.(q|k)_proj\.", entry.hf):
        return None
    return cfg.n_head if ".q_proj." in entry.hf else (cfg.n_kv_head or cfg.n_head)


def int4_from_q4_1(raw: np.ndarray) -> dict[str, torch.Tensor]:
    """Int4Linear buffers (qweight, scales, zeros) for Q4_1 rows (N, K/32 * 20): scales = d,
    zeros = m, the nibbles re-packed into our layout (columns 2j, 2j+1 in one byte)."""
    n = raw.shape[0]
    q, d, m = q4_1_parts(raw.reshape(-1, 20))  # (N * K/32, 32), (N * K/32, 1) x 2
    return {"qweight": pack_int4(torch.from_numpy(q.reshape(n, -1))),  # (N, K/2)
            "scales": torch.from_numpy(d.reshape(n, -1)),             # (N, K/32)
            "zeros": torch.from_numpy(m.reshape(n, -1))}


def int8_from_q8_0(raw: np.ndarray) -> dict[str, torch.Tensor]:
    """Int8Linear buffers (qweight (N, K) int8, scales (N, K/32)) for Q8_0 rows (N, K/32 * 34):
    each block is d (fp16) then 32 int8 q, x = d q."""
    n = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # exact: fp16 -> fp32
    return {"qweight": torch.from_numpy(blocks[:, 2:].copy().view(np.int8).reshape(n, -1)),
            "scales": torch.from_numpy(d.reshape(n, -1))}


def int8_head(f: GGUFFile, model: GPT) -> None:
    """Make a quantized model's head the file's Q8_0 head as a group-32 Int8Linear, in place
    (no-op for another type, or a model without int4 layers)."""
    name = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"
    if f.tensors[name].type.name != INT8_HEAD_TYPE or not getattr(model, "quantization", None):
        return
    cfg = model.config
    head = Int8Linear(cfg.n_embd, cfg.vocab_size, bias=False, group_size=32).to(model.wte.weight.device)
    for buf, t in int8_from_q8_0(f.raw(name)).items():
        setattr(head, buf, t.to(head.scales.device))
    model.lm_head = head
    model.quantization["head"] = {"bits": 8, "group_size": 32}


def _module(ours: str) -> str:
    return ours.rpartition(".")[0]


def _tensors(f: GGUFFile, entries: list[Entry], arch: str, cfg: GPTConfig, int4: set[str],
             dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor) for every entry, one at a time: Int4Linear buffers or floats."""
    for e in entries:
        raw, heads = f.raw(e.info.name), permuted_heads(e, arch, cfg)
        if _module(e.ours) in int4 and e.ours.endswith(".weight"):
            # Rows are whole blocks: the permutation moves them still quantized.
            stored = raw if heads is None else unpermute_rows(raw, heads)
            for buf, t in int4_from_q4_1(stored).items():
                yield f"{_module(e.ours)}.{buf}", t
            continue
        values = dequantize(raw, e.info.type.name)  # (a bias is one row of bytes: floats first)
        if heads is not None:
            values = unpermute_rows(values, heads)
        if not values.flags.writeable:  # a view of the mapped file (F32): own the memory
            values = values.copy()
        is_bias = e.ours.endswith(".bias") and _module(e.ours) in int4
        yield e.ours, torch.from_numpy(values).to(torch.float32 if is_bias else dtype)


# ---- the model ------------------------------------------------------------------------------

class SkipInit(TorchFunctionMode):
    """Build modules without drawing random initial weights: every one is about to be replaced
    by the file's, so the parameters stay uninitialized memory that is never touched. (The
    meta device would do as well but is slower to start: its ops run through torch's Python
    refs, whose first use imports torch._dynamo, ~1.5 s of a cold `generate --model FILE.gguf`.)"""

    RANDOM = (torch.Tensor.normal_, torch.Tensor.uniform_, nn.init.normal_, nn.init.uniform_,
              nn.init.kaiming_uniform_)  # what GPT and nn.Linear/nn.Embedding draw with

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.RANDOM:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def load_gguf_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                    keep_quantized: bool = True, device: str | torch.device = "cpu") -> GPT:
    """Our GPT with a GGUF file's weights (Q4_1 matrices as Int4Linear if `keep_quantized`)."""
    f = read_gguf(path)
    arch = architecture(f)
    cfg = config_from_gguf(f)
    entries = plan(f, cfg)
    int4 = {_module(e.ours) for e in entries if keep_quantized and e.info.type.name == INT4_TYPE
            and e.ours.endswith(".weight") and not e.ours.startswith("wte.")}
    with torch.device(device), SkipInit():
        model = GPT(cfg)  # uninitialized: each tensor is assigned from the file below
        if int4:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            quantize_model(model, bits=4, group_size=32, skip=[n for n in linears if n not in int4],
                           empty=True)
    expected = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for ours, tensor in _tensors(f, entries, arch, cfg, int4, dtype):
        if ours not in expected:
            raise ConfigError(f"{f.path}: tensor for {ours!r} is not in the model the metadata "
                              "describes (a bias or layer the config does not have?)")
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            raise ConfigError(f"{f.path}: {ours!r} has shape {tuple(tensor.shape)} but the "
                              f"metadata implies {tuple(expected[ours].shape)}; the file is "
                              "inconsistent")
        loaded[ours] = tensor.to(device)
    model = _assemble(model, loaded, expected, cfg, f.path)
    if keep_quantized:
        int8_head(f, model)
    return model


def _assemble(model: GPT, loaded: dict[str, torch.Tensor], expected: dict, cfg: GPTConfig,
              where: Path) -> GPT:
    """Assign the tensors to the model (every one: none may stay uninitialized), tie the head."""
    if missing := assign_weights(model, loaded, expected, cfg.tie_embeddings):
        raise ConfigError(f"{where}: the file lacks {len(missing)} tensors its metadata implies, "
                          f"e.g. {missing[:4]}; it is incomplete")
    return model.eval()


def gguf_eos_ids(path: str | os.PathLike) -> list[int]:
    """The ids that end generation: eos, and end-of-turn / end-of-message where recorded."""
    meta = read_gguf(path).metadata
    keys = [f"tokenizer.ggml.{role}_token_id" for role in ("eos", "eot", "eom")]
    return sorted({int(meta[k]) for k in keys if isinstance(meta.get(k), int)})


def gguf_tokenizer(path: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer the file's `tokenizer.ggml.*` metadata holds (tokenizer/gguf_vocab.py);
    None for a file without one (ids only, like a model directory without tokenizer.json)."""
    f = read_gguf(path)
    if "tokenizer.ggml.model" not in f.metadata and "tokenizer.ggml.tokens" not in f.metadata:
        return None
    try:
        return tokenizer_from_gguf(f.metadata)
    except TokenizerError as e:  # say which file
        raise TokenizerError(f"{f.path}: {e}") from None


def gguf_chat_config(path: str | os.PathLike) -> dict:
    """The chat template the file carries (`tokenizer.chat_template`) and its bos/eos text."""
    return chat_config_from_gguf(read_gguf(path).metadata)


def convert_gguf(src: str | os.PathLike, dst: str | os.PathLike, keep_quantized: bool = True,
                 dtype: torch.dtype = torch.float32) -> Path:
    """Write an lmstack model directory (int4 where the file is Q4_1, unless not
    `keep_quantized`) with its tokenizer.json, generation_config.json (eos ids) and
    tokenizer_config.json (chat template), as `convert` writes them from a Hugging Face
    directory. Everything is read and checked first: a failure leaves no directory."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"--dst {dst} is a file; give a directory to write the model into")
    model = load_gguf_model(src, dtype=dtype, keep_quantized=keep_quantized)
    tokenizer = gguf_tokenizer(src)  # one we cannot represent fails here, before any write
    with output_dir(dst):
        save_model(dst, model)
        save_companions(src, dst, tokenizer)
    return dst


def _load(path: Path, device: str | torch.device = "cpu") -> GPT:
    return load_gguf_model(path, device=device)


# Registered from here (pyproject.toml's lmstack.model_formats entry points): `--model FILE.gguf`
# works wherever a model is taken, the models layer importing nothing of interop.
FORMAT = ModelFormat("gguf", detect=is_gguf, load=_load, eos_ids=gguf_eos_ids,
                     tokenizer=gguf_tokenizer, chat_config=gguf_chat_config)
