"""GPT: shapes, causality, attention paths, positions, GQA, dropout, tying, init, input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.models import GPT, num_params
from lmstack.models.kv_cache import KVCache
from lmstack.models.positions import RotaryPositions, alibi_slopes, apply_rotary

from .helpers import random_gpt, randomize, tiny_gpt_config

POSITIONS = ["learned", "rope", "alibi", "none"]


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("mlp,norm", [("gelu", "layernorm"), ("swiglu", "rmsnorm"), ("relu2", "layernorm"),
                                      ("relu", "rmsnorm")])
def test_shapes(position, mlp, norm):
    model = random_gpt(position=position, mlp=mlp, norm=norm)
    idx = torch.randint(0, 61, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, 61)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_changing_a_future_token_leaves_earlier_logits_alone(position, attn_impl):
    model = random_gpt(position=position, attn_impl=attn_impl, n_kv_head=2)
    idx = torch.randint(0, 61, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (idx[:, 12] + 1) % 61
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3  # the change is visible from position 12 on


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("n_kv_head,window", [(4, None), (2, None), (1, None), (2, 6)])
def test_sdpa_and_manual_attention_agree_in_values_and_gradients(position, n_kv_head, window):
    fields = dict(position=position, n_kv_head=n_kv_head, qk_norm=position == "rope", sliding_window=window)
    fast, slow = random_gpt(attn_impl="sdpa", **fields), random_gpt(attn_impl="manual", **fields)
    idx = torch.randint(0, 61, (2, 19))
    target = torch.randint(0, 61, (2, 19))
    losses = []
    for model in (fast, slow):
        logits = model(idx)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        loss.backward()
        losses.append((logits, loss))
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_grouped_query_attention_equals_multi_head_with_repeated_kv_heads():
    # Query head h reads K/V head h // (n_head / n_kv_head): copying each K/V head's weights
    # into its group of heads in a multi-head model must give the same logits.
    gqa = random_gpt(position="rope", n_head=4, n_kv_head=2)
    mha = GPT(tiny_gpt_config(position="rope", n_head=4)).eval()
    state = gqa.state_dict()
    head_dim = 8
    for key, value in list(state.items()):
        if key.endswith(("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")):
            heads = value.view(2, head_dim, *value.shape[1:])
            state[key] = heads.repeat_interleave(2, dim=0).reshape(4 * head_dim, *value.shape[1:])
    mha.load_state_dict(state)
    idx = torch.randint(0, 61, (2, 15))
    torch.testing.assert_close(gqa(idx), mha(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_gqa_projection_and_cache_shapes(n_kv_head):
    model = random_gpt(n_kv_head=n_kv_head)
    attn = model.layers[0].attn
    assert attn.q_proj.weight.shape == (32, 32)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (n_kv_head * 8, 32)
    assert model.new_cache(3, 10).k.shape == (2, 3, n_kv_head, 10, 8)


def test_rope_scores_depend_only_on_distance():
    rope = RotaryPositions(head_dim=8, rope_theta=500.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> float:
        qm = apply_rotary(q, *rope.rotary(torch.tensor([m])))
        kn = apply_rotary(k, *rope.rotary(torch.tensor([n])))
        return float((qm * kn).sum())

    assert score(7, 3) == pytest.approx(score(107, 103), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
    # A rotation keeps lengths.
    rotated = apply_rotary(q, *rope.rotary(torch.tensor([5])))
    assert float(rotated.norm()) == pytest.approx(float(q.norm()), rel=1e-6)


def test_rope_matches_complex_multiplication():
    # RoFormer's definition: feature pair (x_i, x_{i+d/2}) as a complex number times e^{i·pos·θ_i}.
    d, theta, pos = 8, 10000.0, torch.arange(6)
    x = torch.randn(1, 2, 6, d)
    freqs = theta ** (-torch.arange(0, d, 2).float() / d)
    z = torch.complex(x[..., : d // 2], x[..., d // 2 :]) * torch.polar(torch.ones(6, d // 2), pos[:, None] * freqs)
    expected = torch.cat([z.real, z.imag], dim=-1)
    got = apply_rotary(x, *RotaryPositions(head_dim=d, rope_theta=theta).rotary(pos))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]
    assert alibi_slopes(16)[:2] == pytest.approx([2 ** -0.5, 2 ** -1.0])

    def paper(n):  # the reference code published with Press et al. 2022
        def power_of_2(n):
            start = 2 ** (-(2 ** -(math.log2(n) - 3)))
            return [start * start**i for i in range(n)]
        if math.log2(n).is_integer():
            return power_of_2(n)
        closest = 2 ** math.floor(math.log2(n))
        return power_of_2(closest) + paper(2 * closest)[0::2][: n - closest]

    for n in (1, 2, 3, 5, 6, 12, 24):
        assert alibi_slopes(n) == pytest.approx(paper(n))


def test_alibi_attention_matches_the_formula():
    model = random_gpt(position="alibi", n_layer=1, attn_impl="sdpa")
    attn, T = model.layers[0].attn, 9
    x = torch.randn(2, T, 32)
    q = attn.q_proj(x).view(2, T, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(2, T, 4, 8).transpose(1, 2)
    v = attn.v_proj(x).view(2, T, 4, 8).transpose(1, 2)
    slopes = alibi_slopes(4)
    out = torch.zeros(2, 4, T, 8)
    for h in range(4):
        for i in range(T):
            scores = torch.stack([(q[:, h, i] * k[:, h, j]).sum(-1) / math.sqrt(8) - slopes[h] * (i - j)
                                  for j in range(i + 1)], dim=-1)
            out[:, h, i] = (scores.softmax(-1)[..., None] * v[:, h, : i + 1]).sum(1)
    expected = attn.o_proj(out.transpose(1, 2).reshape(2, T, 32))
    pos = torch.arange(T)
    got = attn(x, bias=model.attention_bias(pos, T, x.dtype))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", POSITIONS)
@torch.no_grad()
def test_every_position_scheme_refuses_to_run_past_block_size(position):
    model = random_gpt(position=position, block_size=16)
    zeros = lambda n: torch.zeros(1, n, dtype=torch.long)  # noqa: E731
    model(zeros(16))  # exactly the context is fine
    with pytest.raises(ConfigError, match="sequence length 17 exceeds block_size 16"):
        model(zeros(17))
    with pytest.raises(ConfigError, match="sequence length 20 exceeds block_size 16"):
        model.new_cache(1, max_len=20)
    # A cache with room past the context (built by hand): the model still refuses, before writing.
    cache = KVCache(n_layer=2, batch_size=1, n_kv_head=4, max_len=20, head_dim=8)
    model(zeros(15), cache=cache)
    with pytest.raises(ConfigError, match=r"sequence length 17 \(15 cached \+ 2 new\) exceeds block_size 16"):
        model(zeros(2), cache=cache)
    assert cache.length == 15


def window_reference(model: GPT, x: torch.Tensor, window: int) -> torch.Tensor:
    """Layer 0's attention output written out query by query: query i reads keys
    max(0, i - window + 1)..i, and nothing else."""
    attn, (B, T, C) = model.layers[0].attn, x.shape
    q, k, v = (proj(x).view(B, T, 4, 8).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    out = torch.zeros(B, 4, T, 8)
    for i in range(T):
        seen = slice(max(0, i - window + 1), i + 1)
        scores = (q[:, :, i, None] * k[:, :, seen]).sum(-1) / math.sqrt(8)  # (B, H, keys seen)
        out[:, :, i] = (scores.softmax(-1)[..., None] * v[:, :, seen]).sum(2)
    return attn.o_proj(out.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_sliding_window_attention_matches_the_formula(attn_impl):
    model = random_gpt(position="none", n_layer=1, attn_impl=attn_impl, sliding_window=5)
    x = torch.randn(2, 13, 32)
    expected = window_reference(model, x, window=5)
    got = model.layers[0].attn(x, bias=model.attention_bias(torch.arange(13), 13, x.dtype))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    full = model.layers[0].attn(x)  # negative control: full causal attention differs past the window
    torch.testing.assert_close(full[:, :5], expected[:, :5], rtol=1e-5, atol=1e-5)
    assert (full[:, 5:] - expected[:, 5:]).abs().max() > 1e-2


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
def test_sliding_window_bounds_how_far_a_token_reaches(attn_impl):
    # Each layer looks window - 1 positions back, so with 2 layers token 3 reaches positions
    # 3..3 + 2·(4 - 1) = 9 and no further.
    model = random_gpt(position="rope", attn_impl=attn_impl, sliding_window=4)
    idx = torch.randint(0, 61, (2, 20))
    changed = idx.clone()
    changed[:, 3] = (idx[:, 3] + 1) % 61
    diff = (model(idx) - model(changed)).abs().amax(dim=(0, 2))  # (T,)
    assert diff[:3].max() == 0 and diff[10:].max() == 0
    assert diff[9] > 1e-4  # the reach is exactly that: the window is not narrower than asked


def test_dropout_is_off_in_eval_mode():
    model = random_gpt(dropout=0.5)
    same = GPT(tiny_gpt_config(dropout=0.0))
    same.load_state_dict(model.state_dict())
    idx = torch.randint(0, 61, (2, 12))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))
    torch.testing.assert_close(model(idx), same.eval()(idx))
    model.train()
    assert not torch.allclose(model(idx), model(idx))


def test_tied_embeddings_share_storage_and_untied_do_not():
    tied = GPT(tiny_gpt_config(tie_embeddings=True))
    assert tied.lm_head.weight.data_ptr() == tied.wte.weight.data_ptr()
    with torch.no_grad():
        tied.wte.weight[0, 0] = 123.0
    assert tied.lm_head.weight[0, 0] == 123.0
    untied = GPT(tiny_gpt_config(tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert num_params(untied) - num_params(tied) == 61 * 32


def test_residual_projections_get_scaled_init():
    torch.manual_seed(0)
    n_layer = 8
    model = GPT(tiny_gpt_config(n_layer=n_layer, n_embd=128, mlp="swiglu", bias=True))
    scaled = 0.02 / math.sqrt(2 * n_layer)
    for block in model.layers:
        assert block.attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
        assert block.mlp.down_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
        assert block.attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert block.mlp.gate_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert (block.attn.q_proj.bias == 0).all()
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_qk_norm_adds_per_head_norms():
    model = randomize(GPT(tiny_gpt_config(qk_norm=True, norm="rmsnorm")))
    names = {n for n, _ in model.named_parameters()}
    assert "layers.0.attn.q_norm.weight" in names and "layers.0.attn.k_norm.weight" in names
    assert model.layers[0].attn.q_norm.weight.shape == (8,)


@pytest.mark.parametrize("bad,message", [  # id values are checked where ids enter (protocol.py)
    (torch.tensor([1, 2, 3]), r"\(batch, time\) tensor"),
    (torch.tensor([[1.0, 2.0]]), "integer tensor"),
])
def test_bad_token_ids_raise_config_error(bad, message):
    with pytest.raises(ConfigError, match=message):
        random_gpt()(bad)


def test_swiglu_default_hidden_and_explicit_intermediate_size():
    assert GPT(tiny_gpt_config(mlp="swiglu")).layers[0].mlp.up_proj.weight.shape == (128, 32)  # 8/3·32 -> 128
    assert GPT(tiny_gpt_config(mlp="gelu")).layers[0].mlp.up_proj.weight.shape == (128, 32)    # 4·32
    assert GPT(tiny_gpt_config(mlp="swiglu", intermediate_size=40)).layers[0].mlp.gate_proj.weight.shape == (40, 32)


def test_bias_off_removes_every_bias():
    model = GPT(tiny_gpt_config(bias=False, norm="layernorm"))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


@pytest.mark.parametrize("position", POSITIONS)
def test_last_only_gives_each_rows_last_logits(position):
    model = random_gpt(position=position)
    idx = torch.randint(0, 61, (3, 9))
    assert torch.allclose(model(idx, last_only=True), model(idx)[:, -1:], atol=1e-6)
    lengths = torch.tensor([9, 4, 6])  # right-padded rows: the last real token, not the last slot
    got = model(idx, cache=model.new_cache(3, 12), lengths=lengths, last_only=True)
    full = model(idx, cache=model.new_cache(3, 12), lengths=lengths)
    assert got.shape == (3, 1, 61)
    assert torch.allclose(got[:, 0], full[torch.arange(3), lengths - 1], atol=1e-6)
