"""Small GGUF files written inside the tests with the `gguf` package's writer, from random
transformers models: the file as llama.cpp's converter would write it (Q/K rows permuted for
llama and mistral, every matrix in one ggml type), and the weights the file holds, read back
with the `gguf` package's own dequantizer — the reference our loader must match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

gguf = __import__("pytest").importorskip("gguf")
transformers = __import__("pytest").importorskip("transformers")

Q = gguf.GGMLQuantizationType
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
QUANTIZABLE = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}  # gguf.quants can
# Where each type keeps its fp16 scales (byte offsets in a block): random blocks get sane ones.
FP16_AT = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
           "Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2)}

V = 96
# Rows of 256 so that every K-quant fits; 4 heads of 64, 2 KV heads.
SMALL = dict(vocab_size=V, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             rms_norm_eps=1e-5)
TO_GGUF = [("model.embed_tokens.weight", "token_embd.weight"),
           ("model.norm.weight", "output_norm.weight"), ("lm_head.weight", "output.weight"),
           ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm"),
           ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
           ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
           ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]


def tiny_vocab(model: str = "gpt2") -> dict:
    """`extra` metadata for write_gguf: a byte-level BPE of V tokens (the printable bytes
    33..125, one merge "h e", two ChatML control tokens) in llama.cpp's keys."""
    tokens = [chr(b) for b in range(33, 126)] + ["he", "<|im_start|>", "<|im_end|>"]
    assert len(tokens) == V
    T = gguf.GGUFValueType
    return {"tokenizer.ggml.model": (model, T.STRING), "tokenizer.ggml.pre": ("gpt-2", T.STRING),
            "tokenizer.ggml.tokens": (tokens, T.ARRAY, T.STRING),
            "tokenizer.ggml.token_type": ([1] * (V - 2) + [3, 3], T.ARRAY, T.INT32),
            "tokenizer.ggml.merges": (["h e"], T.ARRAY, T.STRING),
            "tokenizer.chat_template": ("{% for m in messages %}<|im_start|>{{ m.content }}"
                                        "<|im_end|>{% endfor %}", T.STRING)}


def hf_model(arch: str):
    """A random transformers model of a GGUF architecture: llama (tied), qwen2, mistral
    (a sliding window shorter than the test sequences)."""
    torch.manual_seed(0)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**SMALL, rope_theta=1e5, tie_word_embeddings=True)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(**SMALL, rope_theta=1e6, tie_word_embeddings=False)
    else:
        cfg = transformers.MistralConfig(**SMALL, sliding_window=16, tie_word_embeddings=False)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # norms start at 1 and biases at 0: make them count
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def gguf_name(hf: str) -> str:
    """llama.cpp's name of an HF tensor: model.layers.1.mlp.up_proj.weight is blk.1.ffn_up."""
    for a, b in TO_GGUF:
        if hf == a:
            return b
    layer, rest = hf.removeprefix("model.layers.").split(".", 1)
    for a, b in TO_GGUF:
        if rest.startswith(a + "."):
            return f"blk.{layer}.{b}{rest[len(a):]}"
    raise KeyError(hf)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permute: each head's rows (pair, i) -> (i, pair)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def stored(w: np.ndarray, qtype: str, rng: np.random.Generator) -> np.ndarray:
    """What the file stores for a matrix in `qtype`: w quantized by gguf where it can, else
    random blocks (random bytes, fp16 scales small and finite)."""
    if qtype in QUANTIZABLE:
        return gguf.quants.quantize(w.astype(np.float32), Q[qtype])
    size, nbytes = gguf.GGML_QUANT_SIZES[Q[qtype]]
    raw = rng.integers(0, 256, (w.shape[0], w.shape[1] // size * nbytes), dtype=np.uint8)
    blocks = raw.reshape(-1, nbytes)
    for at in FP16_AT.get(qtype, ()):
        scale = (rng.standard_normal((blocks.shape[0], 1)) * 2e-4).astype(np.float16)
        blocks[:, at:at + 2] = scale.view(np.uint8)
    return raw


def write_gguf(path: Path, model, arch: str, qtype: str, *, seed: int = 0,
               extra: dict | None = None, tensors: dict | None = None,
               types: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Write `model` as a GGUF file of architecture `arch` with every matrix in `qtype` (norms
    and biases F32) but those `types` names {GGUF name: type}, plus `extra` metadata {key:
    (value, GGUFValueType[, item type])} and `tensors` {name: float32 array}; return the HF
    state dict the file holds (gguf-dequantized, un-permuted)."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", cfg.num_hidden_layers)
    w.add_uint32(f"{arch}.context_length", cfg.max_position_embeddings)
    w.add_uint32(f"{arch}.embedding_length", cfg.hidden_size)
    w.add_uint32(f"{arch}.feed_forward_length", cfg.intermediate_size)
    w.add_uint32(f"{arch}.attention.head_count", cfg.num_attention_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", cfg.num_key_value_heads)
    w.add_uint32(f"{arch}.rope.dimension_count", cfg.hidden_size // cfg.num_attention_heads)
    w.add_float32(f"{arch}.rope.freq_base", float(cfg.rope_parameters["rope_theta"]))
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    if getattr(cfg, "sliding_window", None) and arch == "mistral":
        w.add_uint32(f"{arch}.attention.sliding_window", cfg.sliding_window)
    w.add_uint32("tokenizer.ggml.bos_token_id", V - 2)
    w.add_uint32("tokenizer.ggml.eos_token_id", V - 1)
    for key, value in (extra or {}).items():
        w.add_key_value(key, *value)
    reference = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
        head = next((h for k, h in heads.items() if f".{k}." in name), None)
        if head and arch in ("llama", "mistral"):
            a = permute(a, head)
        kind = (types or {}).get(gguf_name(name), qtype) if a.ndim == 2 else "F32"
        data = stored(a, kind, rng) if a.ndim == 2 else a
        w.add_tensor(gguf_name(name), data, raw_dtype=Q[kind])
        back = gguf.quants.dequantize(data, Q[kind]).reshape(a.shape)
        if head and arch in ("llama", "mistral"):
            unpermuted = np.empty_like(back)
            unpermuted[permute(np.arange(a.shape[0]), head)] = back  # the permutation's inverse
            back = unpermuted
        reference[name] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))
    for name, a in (tensors or {}).items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


def reference_model(model, weights: dict[str, torch.Tensor]):
    """The transformers model with the weights the file holds."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()
