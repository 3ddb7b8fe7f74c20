"""Parameter counts against published figures; FLOPs per token against the PaLM formula."""

from __future__ import annotations

import torch

from lmstack.models import GPT, GPTConfig, NGramConfig, RNNConfig, build_model, flops_per_token, num_params

GPT2_SMALL = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


def test_gpt2_small_has_its_published_parameter_count():
    with torch.device("meta"):
        model = GPT(GPT2_SMALL)
    # 124,439,808 is what Hugging Face reports for `gpt2`; Kaplan et al.'s non-embedding N
    # leaves out wte (50257·768) and wpe (1024·768).
    assert num_params(model) == 124_439_808
    assert num_params(model, non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768


def test_flops_per_token_follows_palm_appendix_b():
    L, H, Q, T = 12, 12, 64, 1024
    non_embedding = 124_439_808 - 50257 * 768 - 1024 * 768
    matmul_params = non_embedding + 50257 * 768  # the tied head is still a matmul
    assert flops_per_token(GPT2_SMALL, T) == 6 * matmul_params + 12 * L * H * Q * T
    assert flops_per_token(GPT2_SMALL, T, training=False) == 2 * matmul_params + 4 * L * H * Q * T


def test_untied_head_counts_as_embedding_but_costs_flops():
    tied = GPTConfig(vocab_size=100, n_layer=1, n_embd=32, n_head=2)
    untied = GPTConfig(vocab_size=100, n_layer=1, n_embd=32, n_head=2, tie_embeddings=False)
    assert num_params(build_model(untied)) == num_params(build_model(tied)) + 100 * 32
    assert num_params(build_model(untied), non_embedding=True) == num_params(build_model(tied), non_embedding=True)
    assert flops_per_token(untied, 64) == flops_per_token(tied, 64)


def test_recurrent_and_ngram_flops():
    config = RNNConfig(cell="lstm", vocab_size=50, n_embd=16, hidden_size=32, n_layer=1)
    lstm = 4 * (32 * 16 + 32 * 32 + 2 * 32)
    assert flops_per_token(config, seq_len=999) == 6 * (lstm + 50 * 32 + 50)  # no dependence on T
    assert flops_per_token(NGramConfig(), 100) == 0
    assert num_params(build_model(NGramConfig())) == 0
