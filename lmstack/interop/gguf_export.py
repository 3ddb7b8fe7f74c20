"""Export an lmstack GPT to a GGUF file that llama.cpp, Ollama and transformers load.

    python -c "from lmstack.interop.gguf_export import export_gguf;
               export_gguf('runs/quickstart', 'runs/quickstart.q8_0.gguf', 'q8_0')"
    llama-server -m runs/quickstart.q8_0.gguf --port 8080                  # then run it

What maps onto what (hf_family in config.py decides the family; llama.cpp's names are those of
convert_hf_to_gguf.py, which its loader expects):

| lmstack | GGUF `general.architecture` |
|---|---|
| rope + rmsnorm + swiglu, no biases (Llama, Mistral without a window) | `llama` |
| the same with q/k/v biases (Qwen2) | `qwen2` |
| learned positions + LayerNorm + GELU (tanh) + biases (GPT-2) | `gpt2` |

Anything else (ReLU, ALiBi, QK-norm, a sliding window shorter than the context, Qwen2 with
llama3 RoPE scaling) is refused by name: llama.cpp would run a different function.

The `llama` architecture rotates adjacent feature pairs (2i, 2i+1) of each head, where our RoPE
(and Hugging Face's) rotates i with i + head_dim/2; so the rows of q_proj and k_proj are
reordered within each head, as llama.cpp's converter does (`LlamaModel.permute`): row i goes
to 2i, row i + head_dim/2 to 2i + 1. `qwen2` uses the rotate-half layout as is. A Llama-3
scaled RoPE is written as the `rope_freqs` tensor (the per-frequency divisor llama.cpp applies).

Types (`qtype`): f32, f16, bf16, q8_0, q4_0, q4_1 (gguf_quantize.py) for every matrix; norms,
biases and other 1-D tensors stay F32; a matrix whose rows are not a multiple of 32 long is
written F16 instead of a block type (with a warning naming it). The tokenizer: gguf_vocab_export.py.

Tests: `pytest tests/interop/test_gguf_export.py`. Docs: docs/gguf-export.md.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from lmstack.errors import ConfigError, TokenizerError
from lmstack.interop.config import hf_family
from lmstack.interop.gguf_file import read_gguf
from lmstack.interop.gguf_model import gguf_eos_ids, load_gguf_model
from lmstack.interop.gguf_quantize import BLOCK, BLOCK_QUANTIZERS, quantize
from lmstack.interop.gguf_vocab_export import vocab_metadata
from lmstack.interop.gguf_writer import TensorEntry, Value, f32, string, u32, write_gguf
from lmstack.interop.hf import chat_template, read_json
from lmstack.models.directory import find_format, load_model, load_tokenizer, model_eos_ids
from lmstack.models.gpt import GPT, GPTConfig
from lmstack.models.positions import scale_inv_freq
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.gguf_vocab import chat_template_from_gguf, tokenizer_from_gguf

QTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}
# llama.h's llama_ftype: what most of the weights are, shown by llama.cpp when it loads.
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "BF16": 32}
QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION: the block layouts written here


def gguf_architecture(cfg: GPTConfig) -> str:
    """'llama', 'qwen2' or 'gpt2' for a GPT that llama.cpp runs exactly; ConfigError otherwise."""
    family = hf_family(cfg)  # refuses what maps onto no family (ALiBi, QK-norm, ...)
    if cfg.sliding_window is not None and cfg.sliding_window < cfg.block_size:
        raise ConfigError(
            f"sliding_window={cfg.sliding_window} is shorter than the context ({cfg.block_size}); "
            "llama.cpp's llama and qwen2 architectures attend to the whole context, so the "
            "exported model would compute something else. Export a model without a window")
    if family == "gpt2":
        if cfg.mlp != "gelu":
            raise ConfigError(f"mlp={cfg.mlp!r}: llama.cpp's gpt2 architecture uses GELU (tanh); "
                              "only GPT-2 models with mlp='gelu' export to GGUF")
        return "gpt2"
    if family == "qwen2" and (cfg.rope_scaling or {}).get("rope_type") == "llama3":
        raise ConfigError("rope_scaling llama3 on a model with q/k/v biases (qwen2): llama.cpp "
                          "reads llama3 frequency factors only for the llama architecture")
    return "qwen2" if family == "qwen2" else "llama"


def rope_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder the rows of each head from rotate-half pairs (i, i + d/2) to adjacent pairs
    (2i, 2i + 1), for llama.cpp's `llama` RoPE; works on weights (out, in) and biases (out,).

    >>> rope_permute(torch.arange(8.0), n_head=2).tolist()   # head_dim 4: rows 0 2 1 3 | 4 6 5 7
    [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    """
    rest = w.shape[1:]
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *rest).transpose(1, 2).reshape(w.shape)


Part = tuple[str, tuple[str, ...], torch.Tensor]  # (GGUF name, our names it is made of, tensor)


def llama_tensors(state: dict[str, torch.Tensor], cfg: GPTConfig, arch: str,
                  permute: bool = True) -> Iterator[Part]:
    """The tensors of a llama/qwen2 model, Q/K rows permuted for `llama`."""
    heads = {"q_proj": cfg.n_head, "k_proj": cfg.n_kv_head or cfg.n_head}
    names = {"ln_1": "attn_norm", "attn.q_proj": "attn_q", "attn.k_proj": "attn_k",
             "attn.v_proj": "attn_v", "attn.o_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    yield "token_embd.weight", ("wte.weight",), state["wte.weight"]
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                key = f"layers.{i}.{ours}.{kind}"
                if key not in state:
                    continue  # biases: only Qwen2's q/k/v have them
                t, proj = state[key], ours.split(".")[-1]
                if permute and arch == "llama" and proj in heads:
                    t = rope_permute(t, heads[proj])
                yield f"blk.{i}.{theirs}.{kind}", (key,), t
    yield "output_norm.weight", ("ln_f.weight",), state["ln_f.weight"]


def gpt2_tensors(state: dict[str, torch.Tensor], cfg: GPTConfig) -> Iterator[Part]:
    """The tensors of a GPT-2 model; q, k and v fused into one attn_qkv (rows q | k | v)."""
    names = {"ln_1": "attn_norm", "attn.o_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    yield "token_embd.weight", ("wte.weight",), state["wte.weight"]
    yield "position_embd.weight", ("position.wpe.weight",), state["position.wpe.weight"]
    for i in range(cfg.n_layer):
        for kind in ("weight", "bias"):
            qkv = tuple(f"layers.{i}.attn.{p}.{kind}" for p in ("q_proj", "k_proj", "v_proj"))
            yield f"blk.{i}.attn_qkv.{kind}", qkv, torch.cat([state[k] for k in qkv])  # (3C, ...)
            for ours, theirs in names.items():
                key = f"layers.{i}.{ours}.{kind}"
                yield f"blk.{i}.{theirs}.{kind}", (key,), state[key]
    yield "output_norm.weight", ("ln_f.weight",), state["ln_f.weight"]
    yield "output_norm.bias", ("ln_f.bias",), state["ln_f.bias"]


def model_tensors(model: GPT, arch: str, permute: bool = True) -> list[tuple[str, torch.Tensor]]:
    """Every GGUF tensor of a model (float32, CPU); ConfigError if a weight would be left out."""
    cfg = model.config
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    parts = list(gpt2_tensors(state, cfg) if arch == "gpt2" else llama_tensors(state, cfg, arch, permute))
    if cfg.tie_embeddings:  # no `output`: llama.cpp (and transformers) reuse token_embd
        state.pop("lm_head.weight", None)
    else:
        parts.append(("output.weight", ("lm_head.weight",), state["lm_head.weight"]))
    if (cfg.rope_scaling or {}).get("rope_type") == "llama3":
        parts.append(("rope_freqs.weight", (), rope_freq_factors(cfg)))
    left = set(state).difference(*(keys for _, keys, _ in parts))
    if left:
        raise ConfigError(f"the model has weights GGUF's {arch} architecture has no place for: "
                          f"{sorted(left)[:4]}; exporting would change what it computes")
    return [(name, t) for name, _, t in parts]


def rope_freq_factors(cfg: GPTConfig) -> torch.Tensor:
    """(head_dim/2,) divisors of each RoPE frequency: unscaled / scaled, as llama.cpp's
    `rope_freqs` tensor holds them (our positions.py computes the scaled frequencies)."""
    d = cfg.head_dim
    base = 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
    return base / scale_inv_freq(base, cfg.rope_scaling)


def tensor_type(name: str, shape: tuple[int, ...], qtype: str) -> str:
    """The ggml type a tensor is written in: 1-D stays F32, short rows fall back to F16."""
    if len(shape) == 1:
        return "F32"
    if qtype in BLOCK_QUANTIZERS and shape[-1] % BLOCK:
        return "F16"
    return qtype


def hyperparameters(cfg: GPTConfig, arch: str) -> dict[str, Value]:
    """`{arch}.*` keys: the shape of the network, as llama.cpp's loader reads them."""
    keys = {"context_length": u32(cfg.block_size), "embedding_length": u32(cfg.n_embd),
            "block_count": u32(cfg.n_layer), "feed_forward_length": u32(cfg.hidden_size),
            "attention.head_count": u32(cfg.n_head), "vocab_size": u32(cfg.vocab_size)}
    if arch == "gpt2":
        keys["attention.layer_norm_epsilon"] = f32(cfg.norm_eps)
    else:
        keys.update({"attention.head_count_kv": u32(cfg.n_kv_head or cfg.n_head),
                     "attention.layer_norm_rms_epsilon": f32(cfg.norm_eps),
                     "rope.freq_base": f32(cfg.rope_theta),
                     "rope.dimension_count": u32(cfg.head_dim),
                     "attention.key_length": u32(cfg.head_dim),
                     "attention.value_length": u32(cfg.head_dim)})
        scaling = cfg.rope_scaling or {}
        if scaling.get("rope_type") == "linear":  # positions divided by the factor
            keys.update({"rope.scaling.type": string("linear"),
                         "rope.scaling.factor": f32(scaling["factor"])})
    return {f"{arch}.{k}": v for k, v in keys.items()}


def build_gguf(model: GPT, tokenizer: Tokenizer, qtype: str, name: str = "lmstack",
               eos_ids: list[int] | None = None, bos_id: int | None = None,
               template: str | None = None, permute: bool = True) -> tuple[dict[str, Value], list[TensorEntry]]:
    """The metadata and tensor entries of a model's GGUF file (`permute=False` only for tests:
    it writes Q/K rows as they are, which llama.cpp would rotate wrongly)."""
    gtype = QTYPES.get(qtype.lower()) if isinstance(qtype, str) else None
    if gtype is None:
        raise ConfigError(f"--type {qtype!r} is not a GGUF type lmstack writes; choose one of "
                          f"{', '.join(QTYPES)}")
    cfg = model.config
    arch = gguf_architecture(cfg)
    tensors, fallback = [], []
    for tname, t in model_tensors(model, arch, permute):
        shape = tuple(t.shape)
        ttype = tensor_type(tname, shape, gtype)
        if ttype != gtype and len(shape) > 1:
            fallback.append(tname)
        tensors.append(TensorEntry(tname, shape, ttype, lambda t=t, ttype=ttype: quantize(t.numpy(), ttype)))
    if fallback:
        warnings.warn(f"{len(fallback)} tensors have rows that are not a multiple of {BLOCK} long "
                      f"and are written F16 instead of {gtype}: {', '.join(fallback[:4])}"
                      f"{' ...' if len(fallback) > 4 else ''}", stacklevel=2)
    metadata = {"general.architecture": string(arch), "general.name": string(name),
                "general.file_type": u32(FILE_TYPES[gtype])}
    if gtype in BLOCK_QUANTIZERS:
        metadata["general.quantization_version"] = u32(QUANTIZATION_VERSION)
    metadata.update(hyperparameters(cfg, arch))
    metadata.update(vocab_metadata(tokenizer, cfg.vocab_size, eos_ids, bos_id, template))
    return metadata, tensors


def export_gguf(src_dir: str | os.PathLike, dst_path: str | os.PathLike, qtype: str = "f16") -> Path:
    """Write the model at `src_dir` (our directory, a Hugging Face one, or a GGUF file) as a GGUF
    file of type `qtype` (f32, f16, bf16, q8_0, q4_0, q4_1) at `dst_path`, atomically; the path."""
    src, dst = Path(src_dir), Path(dst_path)
    if dst.is_dir():
        raise ConfigError(f"--dst {dst} is a directory; give the path of the .gguf file to write")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ConfigError(f"--dst {dst} is the --src file; write the export elsewhere")
    model, tokenizer, extra = _open_source(src)
    if not isinstance(model, GPT):
        raise ConfigError(f"{src} holds a {type(model).__name__}; only GPT models export to GGUF")
    if tokenizer is None:
        raise ConfigError(f"{src} has no tokenizer.json; a GGUF file carries the vocabulary, and "
                          "llama.cpp cannot run the model without one")
    try:
        metadata, tensors = build_gguf(model, tokenizer, qtype, name=_model_name(src), **extra)
    except (ConfigError, TokenizerError) as e:  # say which model cannot be exported
        raise type(e)(f"{src}: {e}") from None
    return write_gguf(dst, metadata, tensors)


def _open_source(src: Path) -> tuple[object, Tokenizer | None, dict]:
    """(model with float weights, tokenizer, eos_ids/bos_id/template) of any model we open."""
    kind = find_format(src).name
    if kind == "quantized":
        raise ConfigError(f"{src} holds an lmstack-quantized model (int8/int4 layers); export the "
                          "float model it was made from, and pick the GGUF type with --type")
    if kind == "gguf":  # re-quantize a GGUF file: its Q4_1 matrices as floats, not Int4Linear
        meta = read_gguf(src).metadata
        tok = tokenizer_from_gguf(meta)
        return (load_gguf_model(src, keep_quantized=False), tok,
                {"eos_ids": gguf_eos_ids(src), "bos_id": tok.bos_id,
                 "template": chat_template_from_gguf(meta)})
    return (load_model(src), load_tokenizer(src),
            {"eos_ids": model_eos_ids(src), "bos_id": _bos_id(src), "template": chat_template(src)})


def _bos_id(src: Path) -> int | None:
    """The begin-of-sequence id a Hugging Face directory names, if any."""
    for name in ("generation_config.json", "config.json"):
        if (src / name).exists():
            bos = read_json(src / name).get("bos_token_id")
            if isinstance(bos, int) and not isinstance(bos, bool):
                return bos
    return None



def _model_name(src: Path) -> str:
    """general.name: the directory's name, or the file's without its suffix."""
    src = src.resolve()
    return src.stem if src.is_file() else src.name
