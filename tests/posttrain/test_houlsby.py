"""Bottleneck adapters (lmstack/posttrain/peft/houlsby.py): the adapted model starts as its
base, only the adapters train, the output is written out against the formula, save/load round
trip, and adapters for another base (or bad settings) fail with ConfigError."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.peft import (
    HoulsbyConfig,
    HoulsbyLinear,
    LoraConfig,
    apply_houlsby,
    apply_lora,
    houlsby_layers,
    load_houlsby,
    save_adapter,
    save_houlsby,
    trainable_summary,
)

V = 96
LLAMA = {"vocab_size": V, "block_size": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32,
         "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "tie_embeddings": False,
         "intermediate_size": 48}
GPT2 = {**LLAMA, "n_kv_head": None, "position": "learned", "norm": "layernorm", "mlp": "gelu",
        "bias": True, "tie_embeddings": True, "intermediate_size": None}


def gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**LLAMA, **kw})).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(seed))


def randomize_up(model: torch.nn.Module, seed: int = 2) -> None:
    """Nonzero up-projections, so the adapters change the output (zero would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in houlsby_layers(model).values():
            layer.adapter_up.weight.copy_(torch.randn(layer.adapter_up.weight.shape, generator=g) * 0.1)
            layer.adapter_up.bias.copy_(torch.randn(layer.adapter_up.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_starts_as_the_base_and_only_adapters_train(arch):
    model, x = gpt(**arch), ids()
    base = model(x)
    apply_houlsby(model, HoulsbyConfig(bottleneck=8))
    assert sorted(houlsby_layers(model)) == [f"layers.{i}.{p}" for i in (0, 1) for p in ("attn.o_proj", "mlp.down_proj")]
    assert torch.equal(model(x), base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter_" in n for n in trainable)
    d, m = 32, 8
    assert trainable_summary(model).trainable == 2 * 2 * (2 * d * m + m + d)  # 2 blocks x 2 adapters


def test_forward_is_the_papers_formula():
    model = apply_houlsby(gpt(), HoulsbyConfig(bottleneck=4, activation="relu"))
    randomize_up(model)
    layer = model.layers[0].attn.o_proj
    x = torch.randn(3, 32)
    h = x @ layer.weight.T
    expected = h + F.relu(h @ layer.adapter_down.weight.T + layer.adapter_down.bias) @ layer.adapter_up.weight.T \
        + layer.adapter_up.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)


def test_training_moves_the_adapters_only_and_round_trips(tmp_path):
    model, x = gpt(), ids()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_houlsby(model, HoulsbyConfig(bottleneck=8)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tuned = model(x).detach()
    assert (tuned - gpt()(x)).abs().max() > 1e-3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base_state.items())

    save_houlsby(model, tmp_path / "ad", base_model_name_or_path="tiny")
    config = json.loads((tmp_path / "ad/adapter_config.json").read_text())
    assert (config["peft_type"], config["bottleneck_size"], config["non_linearity"]) == ("HOULSBY", 8, "gelu")
    assert config["hidden_sizes"]["layers.1.mlp.down_proj"] == 32
    again = load_houlsby(gpt(), tmp_path / "ad")
    assert isinstance(again.layers[1].mlp.down_proj, HoulsbyLinear)
    torch.testing.assert_close(again(x), tuned, atol=0, rtol=0)


def test_adapter_for_another_base_and_bad_settings_are_refused(tmp_path):
    model = apply_houlsby(gpt(), HoulsbyConfig(bottleneck=8))
    save_houlsby(model, tmp_path / "ad")
    with pytest.raises(ConfigError, match="another base.*'layers.0.attn.o_proj' is 64 wide here"):
        load_houlsby(gpt(n_embd=64), tmp_path / "ad")
    with pytest.raises(ConfigError, match="another base.*adapts 'layers.1.attn.o_proj'"):
        load_houlsby(gpt(n_layer=1), tmp_path / "ad")
    with pytest.raises(ConfigError, match="already carry an adapter"):
        load_houlsby(model, tmp_path / "ad")
    with pytest.raises(ConfigError, match="bottleneck must be a positive integer"):
        HoulsbyConfig(bottleneck=0)
    with pytest.raises(ConfigError, match="activation 'swish' is unknown"):
        HoulsbyConfig(activation="swish")
    with pytest.raises(ConfigError, match=r"\['mlp.c_proj'\] match no Linear"):
        apply_houlsby(gpt(), HoulsbyConfig(target_modules=("mlp.c_proj",)))
    save_adapter(apply_lora(gpt(), LoraConfig(r=2)), tmp_path / "lora")
    with pytest.raises(ConfigError, match="peft_type 'LORA' is not 'HOULSBY'.*load_peft"):
        load_houlsby(gpt(), tmp_path / "lora")
    fresh = gpt()
    config = json.loads((tmp_path / "ad/adapter_config.json").read_text())
    (tmp_path / "ad/adapter_config.json").write_text(json.dumps({**config, "target_modules": config["target_modules"][:2]}))
    with pytest.raises(ConfigError, match="do not match its config.*extra"):
        load_houlsby(fresh, tmp_path / "ad")
    assert not houlsby_layers(fresh)  # refused before any change
