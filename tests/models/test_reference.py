"""Our GPT against Hugging Face `transformers`: random-weight GPT-2, Llama (GQA, RoPE with a
non-default theta, RMSNorm, SwiGLU, untied, no bias) and Qwen 3 (QK-norm), each built from a
config inside the test (nothing is downloaded), weights copied over with the interop layer's
name maps (`lmstack.interop.weights.to_lmstack`), logits compared."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a dev dependency

from lmstack.interop.weights import to_lmstack  # noqa: E402
from lmstack.models import GPT, GPTConfig, num_params  # noqa: E402

from .helpers import cached_logits, randomize  # noqa: E402

V, D, L, H = 61, 32, 2, 4


def hf_to_lmstack(hf_model, family: str, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Our state dict for an HF model's, tensor by tensor through the interop name maps."""
    out = dict(pair for name, t in hf_model.state_dict().items() for pair in to_lmstack(name, t, family, cfg))
    if cfg.tie_embeddings:
        out.setdefault("lm_head.weight", out["wte.weight"])  # HF may leave the tied copy out
    return out


def compare(ours: GPT, hf_model, seq_len: int = 24) -> None:
    """Logits of both models on the same random ids, full and through our KV cache."""
    idx = torch.randint(0, V, (2, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(idx).logits
        got = ours(idx)
        assert expected.abs().max() > 1.0  # weights are random enough to make the check bite
        assert (got - expected).abs().max() < 1e-4
        assert (cached_logits(ours, idx, prefill=10) - expected).abs().max() < 1e-4


def test_gpt2():
    hf_config = transformers.GPT2Config(
        vocab_size=V, n_positions=32, n_embd=D, n_layer=L, n_head=H, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        bos_token_id=0, eos_token_id=0)
    hf_model = randomize(transformers.GPT2LMHeadModel(hf_config), seed=3, std=0.6).eval()
    ours = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=L, n_head=H, n_embd=D)).eval()
    ours.load_state_dict(hf_to_lmstack(hf_model, "gpt2", ours.config))
    assert num_params(ours) == sum(p.numel() for p in hf_model.parameters())
    compare(ours, hf_model)


def test_llama_with_grouped_query_attention():
    hf_config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=72, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, bos_token_id=0, eos_token_id=0)
    hf_model = randomize(transformers.LlamaForCausalLM(hf_config), seed=4).eval()
    ours = GPT(GPTConfig(
        vocab_size=V, block_size=64, n_layer=L, n_head=H, n_kv_head=2, n_embd=D, position="rope",
        rope_theta=500.0, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", intermediate_size=72, bias=False,
        tie_embeddings=False)).eval()
    ours.load_state_dict(hf_to_lmstack(hf_model, "llama", ours.config))
    assert num_params(ours) == sum(p.numel() for p in hf_model.parameters())
    compare(ours, hf_model, seq_len=40)


def test_qwen3_with_qk_norm_and_multi_query_attention():
    hf_config = transformers.Qwen3Config(
        vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=1, head_dim=D // H, max_position_embeddings=64, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        attention_bias=False, use_sliding_window=False, bos_token_id=0, eos_token_id=0)
    hf_model = randomize(transformers.Qwen3ForCausalLM(hf_config), seed=5).eval()
    ours = GPT(GPTConfig(
        vocab_size=V, block_size=64, n_layer=L, n_head=H, n_kv_head=1, n_embd=D, position="rope",
        rope_theta=1e6, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", intermediate_size=64, bias=False,
        tie_embeddings=True, qk_norm=True)).eval()
    ours.load_state_dict(hf_to_lmstack(hf_model, "llama", ours.config))
    compare(ours, hf_model)
