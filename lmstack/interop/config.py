"""Hugging Face `config.json` <-> `GPTConfig`, for the GPT-2 and Llama families.

Supported (`model_type` in config.json):

- `gpt2`: learned positions, LayerNorm with bias, GELU (tanh approximation: `gelu_new`,
  `gelu_pytorch_tanh`) or ReLU, biases everywhere, tied embeddings. Read: vocab_size,
  n_positions, n_embd, n_layer, n_head, n_inner, layer_norm_epsilon, activation_function,
  tie_word_embeddings.
- `llama`, `mistral`, `qwen2`: RoPE (rope_theta; rope scaling of type default, linear or
  llama3), RMSNorm, SwiGLU (`silu`), grouped-query attention (num_key_value_heads), tied or
  untied embeddings, no biases but Qwen2's q/k/v biases. Read:
  vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
  num_key_value_heads, head_dim (must equal hidden_size / num_attention_heads),
  max_position_embeddings, rms_norm_eps, rope_theta / rope_scaling (transformers 4) or
  rope_parameters (transformers 5), tie_word_embeddings, hidden_act, and the sliding window
  (`sliding_window_of`): Mistral's `sliding_window` windows every layer; Qwen2's only with
  `use_sliding_window`, and then the layers from `max_window_layers` on (or those `layer_types`
  names "sliding_attention"): all of them or none, since one window for every layer is what
  GPTConfig.sliding_window models. block_size is max_position_embeddings.

Everything else that changes the computation (another activation, `attention_bias`,
`mlp_bias`, dynamic NTK or
YaRN rope scaling, GPT-2's `scale_attn_by_inverse_layer_idx` or `reorder_and_upcast_attn`...)
is refused with a `ConfigError` naming the field — never silently approximated. Fields that do
not change the function (initializer_range, use_cache, token ids, dropout at inference...) are
ignored.

    >>> cfg = config_from_hf({"model_type": "llama", "vocab_size": 100, "hidden_size": 32,
    ...     "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...     "num_key_value_heads": 2, "max_position_embeddings": 128})
    >>> cfg.position, cfg.norm, cfg.mlp, cfg.n_kv_head, cfg.tie_embeddings
    ('rope', 'rmsnorm', 'swiglu', 2, False)
    >>> config_to_hf(cfg)["model_type"]
    'llama'
"""

from __future__ import annotations

from typing import Any

from lmstack.errors import ConfigError
from lmstack.models.gpt import GPTConfig

GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "relu": "relu"}
LLAMA_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")


def _refuse(source: str, field: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{source}: {field}={value!r} is not supported ({why}); lmstack imports "
                       "GPT-2 and Llama/Mistral/Qwen2 checkpoints without it")


def hf_model_type(d: dict) -> str | None:
    """The HF model_type of a config dict, if it is one we import."""
    t = d.get("model_type")
    return t if t in ("gpt2", *LLAMA_TYPES) else None


def config_from_hf(d: dict, source: str = "config.json") -> GPTConfig:
    """Our `GPTConfig` for a Hugging Face config dict; `ConfigError` for anything unsupported."""
    model_type = d.get("model_type")
    if model_type == "gpt2":
        return _from_gpt2(d, source)
    if model_type in LLAMA_TYPES:
        return _from_llama(d, source)
    raise ConfigError(f"{source}: model_type {model_type!r} is not supported; lmstack imports "
                      f"gpt2, {', '.join(LLAMA_TYPES)} (architectures {d.get('architectures')})")


def _from_gpt2(d: dict, source: str) -> GPTConfig:
    act = d.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise _refuse(source, "activation_function", act, f"known: {sorted(GPT2_ACTIVATIONS)}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if d.get(flag):
            raise _refuse(source, flag, d[flag], "it changes attention")
    if d.get("scale_attn_weights", True) is False:
        raise _refuse(source, "scale_attn_weights", False, "attention is always scaled by 1/sqrt(d)")
    return GPTConfig(
        vocab_size=d["vocab_size"], block_size=d.get("n_positions", 1024), n_layer=d["n_layer"],
        n_head=d["n_head"], n_embd=d["n_embd"], position="learned", norm="layernorm",
        norm_eps=d.get("layer_norm_epsilon", 1e-5), mlp=GPT2_ACTIVATIONS[act],
        intermediate_size=d.get("n_inner"), bias=True,
        tie_embeddings=d.get("tie_word_embeddings", True), dropout=0.0)


def rope_settings(d: dict, source: str) -> tuple[float, dict | None]:
    """(rope_theta, scaling dict or None) from transformers 4 or 5 style fields."""
    params = dict(d.get("rope_parameters") or {})
    scaling = dict(d.get("rope_scaling") or {})
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    merged = {**scaling, **params}
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise _refuse(source, "rope_type", kind, f"supported rope types: {ROPE_TYPES}")
    if kind == "default":
        return float(theta), None
    keep = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    return float(theta), {"rope_type": kind, **{k: v for k, v in merged.items() if k in keep}}


def _from_llama(d: dict, source: str) -> GPTConfig:
    model_type = d["model_type"]
    if d.get("hidden_act", "silu") != "silu":
        raise _refuse(source, "hidden_act", d["hidden_act"], "the Llama MLP here is SwiGLU (silu)")
    for flag in ("mlp_bias", "attention_bias"):
        if d.get(flag):
            raise _refuse(source, flag, True, "only Qwen2's q/k/v biases are modelled")
    heads, width = d["num_attention_heads"], d["hidden_size"]
    if d.get("head_dim") not in (None, width // heads):
        raise _refuse(source, "head_dim", d["head_dim"], f"head_dim must be hidden_size / "
                      f"num_attention_heads = {width // heads}")
    if d.get("pretraining_tp", 1) != 1:
        raise _refuse(source, "pretraining_tp", d["pretraining_tp"], "use 1")
    theta, scaling = rope_settings(d, source)
    return GPTConfig(
        vocab_size=d["vocab_size"], block_size=d.get("max_position_embeddings", 2048),
        sliding_window=sliding_window_of(d, source), n_layer=d["num_hidden_layers"],
        n_head=heads, n_kv_head=d.get("num_key_value_heads") or heads, n_embd=width,
        position="rope", rope_theta=theta, rope_scaling=scaling, norm="rmsnorm",
        norm_eps=d.get("rms_norm_eps", 1e-6), mlp="swiglu",
        intermediate_size=d["intermediate_size"], bias=False,
        qkv_bias=True if model_type == "qwen2" else None,
        tie_embeddings=d.get("tie_word_embeddings", False), dropout=0.0)


def sliding_window_of(d: dict, source: str) -> int | None:
    """The attention window of every layer of a Llama-family config, or None (full attention);
    `ConfigError` if only some layers are windowed.

    >>> sliding_window_of({"model_type": "mistral", "sliding_window": 16}, "config.json")
    16
    >>> sliding_window_of({"model_type": "qwen2", "sliding_window": 16}, "config.json")  # off by default
    >>> sliding_window_of({"model_type": "qwen2", "sliding_window": 16, "use_sliding_window": True,
    ...                    "num_hidden_layers": 2, "max_window_layers": 0}, "config.json")
    16
    """
    window, model_type = d.get("sliding_window"), d["model_type"]
    if window is None or model_type == "llama":  # Llama attention never reads the field
        return None
    if model_type == "qwen2":  # transformers' Qwen2Config: off unless asked, then per layer
        if not d.get("use_sliding_window", False):
            return None
        n, first = d["num_hidden_layers"], d.get("max_window_layers", 28)
        types = d.get("layer_types") or ["sliding_attention" if i >= first else "full_attention"
                                         for i in range(n)]
        if "sliding_attention" not in types:
            return None
        if set(types) != {"sliding_attention"}:
            raise _refuse(source, "max_window_layers", first, f"layers {types} mix windowed and full "
                          "attention; one sliding_window for every layer (max_window_layers 0) is modelled")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise _refuse(source, "sliding_window", window, "it must be a positive integer or null")
    return window


def hf_family(cfg: GPTConfig) -> str:
    """Which HF family an lmstack GPT maps onto exactly ('gpt2', 'llama', 'mistral' or 'qwen2')."""
    if (cfg.position == "learned" and cfg.norm == "layernorm" and cfg.mlp in ("gelu", "relu")
            and cfg.bias and cfg.qkv_bias is not False and cfg.n_kv_head in (None, cfg.n_head)
            and not cfg.qk_norm and cfg.sliding_window is None):
        return "gpt2"
    if cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and not cfg.qk_norm:
        if not cfg.bias and cfg.qkv_bias:
            return "qwen2"
        if not cfg.bias and not cfg.qkv_bias:
            return "llama" if cfg.sliding_window is None else "mistral"
    raise ConfigError(
        "this model does not map onto a Hugging Face family: GPT-2 needs position=learned, "
        "norm=layernorm, mlp=gelu|relu, bias=true, no GQA, no sliding_window; Llama needs position=rope, "
        f"norm=rmsnorm, mlp=swiglu, no qk_norm (got position={cfg.position}, norm={cfg.norm}, "
        f"mlp={cfg.mlp}, bias={cfg.bias}, qk_norm={cfg.qk_norm})")


def config_to_hf(cfg: GPTConfig) -> dict:
    """A Hugging Face config dict for an lmstack GPT of a supported family."""
    family = hf_family(cfg)
    if family == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
                "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.intermediate_size,
                "activation_function": "gelu_new" if cfg.mlp == "gelu" else "relu",
                "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[family]
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "default", **(cfg.rope_scaling or {})}
    out = {"architectures": [arch], "model_type": family, "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.n_embd, "intermediate_size": cfg.hidden_size,
           "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
           "num_key_value_heads": cfg.n_kv_head or cfg.n_head, "head_dim": cfg.head_dim,
           "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
           "rope_theta": cfg.rope_theta, "rope_parameters": rope, "hidden_act": "silu",
           "tie_word_embeddings": cfg.tie_embeddings}
    if cfg.rope_scaling:
        out["rope_scaling"] = dict(cfg.rope_scaling)
    if family == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    window = cfg.sliding_window
    if family == "mistral":
        out["sliding_window"] = window
    if family == "qwen2":  # every layer windowed, or none
        out.update(use_sliding_window=window is not None, sliding_window=window,
                   max_window_layers=0 if window is not None else cfg.n_layer)
    return out
