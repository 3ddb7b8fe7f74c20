"""The one PEFT entry (lmstack/posttrain/peft/registry.py): apply_peft / save_peft / load_peft
round-trip every method (LoRA, QLoRA, prompt tuning, adapters) with identical logits, the
loader picks the method from peft_type, peft_parameters is exactly what trains, and bad input
fails with ConfigError."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.peft import (
    PEFT_METHODS,
    HoulsbyConfig,
    LoraConfig,
    PromptTuningConfig,
    QuantConfig,
    apply_houlsby,
    apply_lora,
    apply_peft,
    load_peft,
    peft_method,
    peft_parameters,
    save_peft,
    trainable_summary,
)

V = 96
LLAMA = {"vocab_size": V, "block_size": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64,
         "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "tie_embeddings": False,
         "intermediate_size": 128}
CONFIGS = {
    "lora": (LoraConfig(r=4), None, "LORA"),
    "qlora-nf4": (LoraConfig(r=4), QuantConfig(), "LORA"),
    "qlora-int4": (LoraConfig(r=4), QuantConfig(method="int4"), "LORA"),
    "prompt": (PromptTuningConfig(num_virtual_tokens=4), None, "PROMPT_TUNING"),
    "houlsby": (HoulsbyConfig(bottleneck=8), None, "HOULSBY"),
}


def gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**LLAMA, **kw})).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_method_trains_saves_and_loads_through_one_entry(name, tmp_path):
    config, quant, peft_type = CONFIGS[name]
    model, x = apply_peft(gpt(), config, quant), ids()
    assert peft_method(model) == peft_type
    params = peft_parameters(model)
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable_summary(model).trainable == sum(p.numel() for p in params) > 0
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    expected = model(x).detach()
    assert not torch.allclose(expected, gpt()(x), atol=1e-4)  # it learned something
    save_peft(model, tmp_path / "ad", base_model_name_or_path="tiny")
    assert json.loads((tmp_path / "ad/adapter_config.json").read_text())["peft_type"] == peft_type
    again = load_peft(gpt(), tmp_path / "ad", quant)
    torch.testing.assert_close(again(x), expected, atol=0, rtol=0)


def test_registry_covers_the_three_peft_types():
    assert sorted(PEFT_METHODS) == ["HOULSBY", "LORA", "PROMPT_TUNING"]


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="dict is not a PEFT config"):
        apply_peft(gpt(), {"r": 4})
    with pytest.raises(ConfigError, match="takes LoRA only, not HOULSBY"):
        apply_peft(gpt(), HoulsbyConfig(), QuantConfig())
    with pytest.raises(ConfigError, match="carries no PEFT method"):
        save_peft(gpt(), tmp_path / "none")
    both = apply_houlsby(apply_lora(gpt(), LoraConfig(r=2)), HoulsbyConfig(bottleneck=4))
    with pytest.raises(ConfigError, match=r"several PEFT methods \(\['LORA', 'HOULSBY'\]\)"):
        peft_parameters(both)
    save_peft(apply_peft(gpt(), HoulsbyConfig(bottleneck=4)), tmp_path / "ad")
    with pytest.raises(ConfigError, match="HOULSBY adapter; a quantized base"):
        load_peft(gpt(), tmp_path / "ad", QuantConfig())
    config = json.loads((tmp_path / "ad/adapter_config.json").read_text())
    (tmp_path / "ad/adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(ConfigError, match="peft_type 'IA3' is not one lmstack loads"):
        load_peft(gpt(), tmp_path / "ad")
    with pytest.raises(ConfigError, match="adapter_config.json does not exist"):
        load_peft(gpt(), tmp_path / "missing")
