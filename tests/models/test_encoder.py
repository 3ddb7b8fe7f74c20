"""The bidirectional encoder (lmstack/models/encoder.py) against itself across code paths: padded
batches equal each row alone, sdpa equals the written-out attention, every token sees every other
(a causal model would not), heads, hidden states, the directory round trip and bad input. Its
match to Hugging Face's BERT is tests/interop/test_bert.py."""

from __future__ import annotations

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import ENCODERS, MODELS, Encoder, EncoderConfig, build_model
from lmstack.models.directory import load_model, save_model
from lmstack.models.positions import alibi_slopes

V = 40
VARIANTS = {
    "bert": {},
    "pre-rope-rmsnorm-swiglu-gqa": dict(position="rope", norm_position="pre", embedding_norm=False,
                                        norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", n_kv_head=2,
                                        bias=False, qk_norm=True),
    "alibi-pooler": dict(position="alibi", pooler=True, head="classification", num_labels=3),
    "nope-no-types": dict(position="none", type_vocab_size=0, head="none", mlp="gelu"),
}


def encoder(name: str = "bert", **overrides) -> Encoder:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32, **VARIANTS[name])
    model = Encoder(EncoderConfig(**{**cfg, **overrides})).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: make them count
        for n, p in model.named_parameters():
            if "ln" in n or "norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three rows of 9, right-padded to lengths 9, 6 and 2 (padding id 0), two segments each."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (3, 9), generator=g)
    lengths = torch.tensor([9, 6, 2])
    mask = (torch.arange(9) < lengths[:, None]).long()
    types = (torch.arange(9) >= 4).long().expand(3, 9) * mask
    return ids * mask, mask, types


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.no_grad()
def test_a_padded_batch_equals_each_row_alone(name):
    model = encoder(name)
    ids, mask, types = batch()
    tt = None if name == "nope-no-types" else types
    out = model.encode(ids, mask, tt)
    for b, n in enumerate(mask.sum(1).tolist()):
        alone = model.encode(ids[b:b + 1, :n], None, None if tt is None else tt[b:b + 1, :n])
        torch.testing.assert_close(out.last_hidden_state[b, :n], alone.last_hidden_state[0], atol=1e-5, rtol=0)
        if out.pooled is not None:
            torch.testing.assert_close(out.pooled[b], alone.pooled[0], atol=1e-5, rtol=0)
    # Negative control: without the mask the padded rows read their padding and change.
    unmasked = model.encode(ids, None, tt).last_hidden_state
    assert (unmasked[2, :2] - out.last_hidden_state[2, :2]).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sdpa_and_manual_attention_agree_in_values_and_gradients(name):
    ids, mask, types = batch()
    tt = None if name == "nope-no-types" else types
    results = []
    for impl in ("sdpa", "manual"):
        model = encoder(name, attn_impl=impl)
        out = model(ids, attention_mask=mask, token_type_ids=tt)
        out.square().sum().backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], atol=1e-5, rtol=1e-4, msg=n)


@torch.no_grad()
def test_every_token_sees_the_whole_sequence():
    ids, _, _ = batch()
    model = encoder()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % V
    first = model(ids)[:, 0] - model(changed)[:, 0]  # the first token's logits, last token changed
    assert first.abs().max() > 1e-5  # small at N(0, 0.02) init, yet 100x the control's bound
    # Negative control: the same layers made causal leave the first token untouched.
    for block in model.layers:
        block.attn.causal = True
    torch.testing.assert_close(model(ids)[:, 0], model(changed)[:, 0], atol=1e-7, rtol=0)


def test_symmetric_alibi_penalizes_keys_ahead_like_keys_behind():
    model = encoder("alibi-pooler")
    pos = torch.arange(4)
    bias = model.attention_bias(pos, None, torch.float32)          # (H, T, T)
    slopes = torch.tensor(alibi_slopes(4))
    distance = (pos[:, None] - pos[None, :]).abs().float()
    torch.testing.assert_close(bias, -slopes[:, None, None] * distance)
    padded = model.attention_bias(pos, torch.tensor([[1, 1, 1, 0]]), torch.float32)  # (1, H, T, T)
    assert padded.shape == (1, 4, 4, 4) and (padded[..., 3] < -1e30).all()
    torch.testing.assert_close(padded[0, :, :, :3], bias[:, :, :3])


@torch.no_grad()
def test_hidden_states_of_every_layer():
    model = encoder("pre-rope-rmsnorm-swiglu-gqa")
    ids, mask, types = batch()
    out = model.encode(ids, mask, types, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.n_layer + 1
    assert out.hidden_states[-1] is out.last_hidden_state  # pre-norm: the last is after ln_f
    x = out.hidden_states[0]
    torch.testing.assert_close(x, model.position.embed(model.wte(ids) + model.wtt(types), torch.arange(9)))
    pos = torch.arange(9)
    x = model.layers[0](x, model.position.rotary(pos), model.attention_bias(pos, mask, x.dtype))
    torch.testing.assert_close(out.hidden_states[1], x)
    assert model.encode(ids, mask, types).hidden_states is None  # only when asked


def test_heads_shapes_tying_and_every_parameter_trained():
    ids, mask, types = batch()
    mlm = encoder()
    assert mlm.head.decoder.weight is mlm.wte.weight
    logits = mlm(ids, attention_mask=mask, token_type_ids=types)
    assert logits.shape == (3, 9, V)
    picked = mask.bool()
    h = mlm.encode(ids, mask, types).last_hidden_state[picked]     # (N, C): masked positions only
    torch.testing.assert_close(mlm.head.logits(h), logits[picked])
    logits[picked].logsumexp(-1).sum().backward()
    assert [n for n, p in mlm.named_parameters() if p.grad is None] == []  # no unused parameter
    cls = encoder("alibi-pooler")
    assert cls(ids, attention_mask=mask, token_type_ids=types).shape == (3, 3)
    untied = encoder(tie_embeddings=False)
    assert untied.head.decoder.weight is not untied.wte.weight


def test_registered_as_an_encoder_and_round_trips_through_a_directory(tmp_path):
    assert "encoder" in ENCODERS and "encoder" not in MODELS  # MODELS: the language models
    model = encoder("pre-rope-rmsnorm-swiglu-gqa")
    config = model.config.to_dict()
    assert config["model_type"] == "encoder" and type(build_model(config)) is Encoder
    save_model(tmp_path / "enc", model)
    loaded = load_model(tmp_path / "enc")
    ids, mask, types = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask, token_type_ids=types),
                                   model(ids, attention_mask=mask, token_type_ids=types), atol=0, rtol=0)


def test_longer_than_the_positions_is_a_clear_error():
    model = encoder()
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly block_size is fine
    with pytest.raises(ConfigError, match="input of 17 tokens is longer than the encoder's 16 positions.*truncat"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ConfigError, match="position_ids reach 16"):
        model(torch.zeros(1, 3, dtype=torch.long), position_ids=torch.tensor([0, 1, 16]))


@pytest.mark.parametrize("fields, message", [
    ({"head": "ner"}, "head 'ner' is not one of"),
    ({"head": "classification"}, "set pooler=true"),
    ({"norm_position": "sandwich"}, "norm_position 'sandwich' is not one of"),
    ({"type_vocab_size": -1}, "type_vocab_size must be 0"),
    ({"mlp": "geglu"}, "mlp 'geglu' is not one of"),
    ({"n_embd": 30, "n_head": 4}, "n_embd 30 is not divisible by n_head 4"),
    ({"sliding_window": 4}, "EncoderConfig has no field 'sliding_window'"),
])
def test_bad_configs_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        EncoderConfig.from_dict(fields)


def test_bad_inputs_are_refused_at_the_boundary():
    model = encoder("nope-no-types")
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="no token-type embeddings"):
        model(ids, token_type_ids=torch.zeros_like(ids))
    with pytest.raises(ConfigError, match=r"attention_mask must have the ids' shape \(2, 3\)"):
        model(ids, attention_mask=torch.ones(2, 4))
    with pytest.raises(ConfigError, match=r"\(batch, time\) tensor"):
        model(torch.tensor([1, 2]))
