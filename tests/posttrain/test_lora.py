"""LoRA (lmstack/posttrain/peft): the wrapped model starts as its base, only A and B train,
merge/unmerge round-trip, adapters save and load, and exchange with Hugging Face `peft` both ways
on a tiny random Llama built in the test (no downloads). Bad configs and foreign adapters fail
with ConfigError."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.peft import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    lora_summary,
    merge_lora,
    save_adapter,
    unload_lora,
    unmerge_lora,
)

V = 96
LLAMA = {"vocab_size": V, "block_size": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32,
         "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "tie_embeddings": False,
         "intermediate_size": 48}


def gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**LLAMA, **kw})).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(seed))


def randomize_b(model: torch.nn.Module, seed: int = 2) -> None:
    """Nonzero B, so the adapter changes the output (a zero B would hide every mistake)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


def test_zero_init_equals_base_and_only_lora_trains():
    model, x = gpt(), ids()
    base = model(x)
    apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=("q_proj", "layers.*.attn.v_proj")))
    assert sorted(lora_layers(model)) == [f"layers.{i}.attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert torch.equal(model(x), base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model)) and len(trainable) == 8
    assert all(torch.equal(t, torch.zeros_like(t)) for n, t in lora_state_dict(model).items() if "lora_B" in n)
    # A is Kaiming-uniform: nonzero, within nn.Linear's bound 1/sqrt(in)
    a = model.layers[0].attn.q_proj.lora_A.weight
    assert a.abs().max() <= 1 / 32 ** 0.5 and a.abs().min() < a.abs().max()
    s = lora_summary(model)
    assert s.trainable == 2 * (4 * (32 + 32) + 4 * (32 + 16)) and s.total > 10 * s.trainable


def test_training_changes_output_then_merge_and_unmerge_round_trip():
    model, x = gpt(), ids()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base = model(x).detach()
    apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj", "down_proj")))
    model.train()
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tuned = model(x).detach()
    assert (tuned - base).abs().max() > 1e-3  # the adapter learned something
    frozen = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(frozen[k], base_state[k]) for k in base_state)  # the base did not move

    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(model(x), tuned, atol=1e-5, rtol=0)
    assert not torch.equal(model.layers[0].attn.q_proj.weight, base_state["layers.0.attn.q_proj.weight"])
    unmerge_lora(model)
    for k, v in base_state.items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-6, rtol=0), k
    torch.testing.assert_close(model(x), tuned, atol=1e-5, rtol=0)

    unload_lora(model)  # merged into plain nn.Linear layers: the base's names, the tuned function
    assert not lora_layers(model) and set(model.state_dict()) == set(base_state)
    assert type(model.layers[0].attn.q_proj) is torch.nn.Linear
    torch.testing.assert_close(model(x), tuned, atol=1e-5, rtol=0)


def test_dropout_acts_on_the_lora_branch_only_while_training():
    model, x = gpt(), ids()
    base = model(x)
    apply_lora(model, LoraConfig(r=4, dropout=0.5)).train()
    torch.testing.assert_close(model(x), base, atol=0, rtol=0)  # B = 0: dropout cannot show
    randomize_b(model)
    model.eval()
    tuned = model(x)
    model.train()
    assert not torch.allclose(model(x), tuned, atol=1e-4)  # inputs of the branch dropped
    merge_lora(model)  # merged: the update sits in W, no dropout on it
    torch.testing.assert_close(model(x), tuned, atol=1e-5, rtol=0)


def test_save_and_load_round_trip(tmp_path):
    model, x = gpt(), ids()
    apply_lora(model, LoraConfig(r=2, alpha=4, target_modules=("v_proj", "o_proj")))
    randomize_b(model)
    expected = model(x)
    save_adapter(model, tmp_path / "ad", base_model_name_or_path="tiny-llama")
    config = json.loads((tmp_path / "ad/adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["task_type"], config["bias"]) == \
        ("LORA", 2, 4, "CAUSAL_LM", "none")
    assert config["target_modules"] == ["o_proj", "v_proj"] and config["base_model_name_or_path"] == "tiny-llama"
    from safetensors.torch import load_file
    keys = load_file(tmp_path / "ad/adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight" in keys and len(keys) == 8

    again = load_adapter(gpt(), tmp_path / "ad")
    assert isinstance(again.layers[1].attn.o_proj, LoraLinear)
    torch.testing.assert_close(again(x), expected, atol=0, rtol=0)
    assert not torch.equal(gpt()(x), expected)  # negative control: the adapter matters


def test_some_layers_only_and_a_gpt2_style_model_keep_our_names(tmp_path):
    model, x = gpt(n_kv_head=None, position="learned", norm="layernorm", mlp="gelu", bias=True,
                   tie_embeddings=True, intermediate_size=None), ids()
    apply_lora(model, LoraConfig(r=3, target_modules=("layers.1.attn.q_proj", "up_proj")))
    randomize_b(model)
    save_adapter(model, tmp_path / "ad")
    config = json.loads((tmp_path / "ad/adapter_config.json").read_text())
    assert config["target_modules"] == ["layers.1.attn.q_proj", "up_proj"]
    from safetensors.torch import load_file
    assert "base_model.model.layers.1.attn.q_proj.lora_A.weight" in load_file(tmp_path / "ad/adapter_model.safetensors")
    fresh = gpt(n_kv_head=None, position="learned", norm="layernorm", mlp="gelu", bias=True,
                tie_embeddings=True, intermediate_size=None)
    torch.testing.assert_close(load_adapter(fresh, tmp_path / "ad")(x), model(x), atol=0, rtol=0)


def test_bad_configs_fail_clearly():
    with pytest.raises(ConfigError, match=r"\['qq_proj'\] match no Linear.*layers.0.attn.q_proj"):
        apply_lora(gpt(), LoraConfig(target_modules=("q_proj", "qq_proj")))
    with pytest.raises(ConfigError, match="r=20 is larger than layer 'layers.0.attn.v_proj'.*at most 16"):
        apply_lora(gpt(), LoraConfig(r=20))  # v_proj is 32 -> 16 (two K/V heads of 8)
    with pytest.raises(ConfigError, match="shares its weight"):
        apply_lora(gpt(tie_embeddings=True), LoraConfig(target_modules=("lm_head",)))
    with pytest.raises(ConfigError, match="rank r must be a positive"):
        LoraConfig(r=0)
    model = apply_lora(gpt(), LoraConfig())
    assert all(p.requires_grad for p in lora_parameters(model))
    with pytest.raises(ConfigError, match="already has a LoRA"):
        apply_lora(model, LoraConfig(target_modules=("layers.0.attn.q_proj",)))


def test_fused_model_is_refused_with_a_hint():
    from lmstack.infer.fuse import prepare_decode
    with pytest.raises(ConfigError, match="fused.*unfused model"):
        apply_lora(prepare_decode(gpt()), LoraConfig())


def test_adapter_for_another_base_is_refused(tmp_path):
    model = apply_lora(gpt(), LoraConfig(r=4))
    save_adapter(model, tmp_path / "ad")
    with pytest.raises(ConfigError, match="another base.*layer 'layers.0.attn.q_proj' has A"):
        load_adapter(gpt(n_embd=64), tmp_path / "ad")  # wider
    with pytest.raises(ConfigError, match="another base.*'model.layers.1.self_attn.q_proj'"):
        load_adapter(gpt(n_layer=1), tmp_path / "ad")  # shallower
    with pytest.raises(ConfigError, match="already has LoRA layers"):
        load_adapter(model, tmp_path / "ad")
    config = json.loads((tmp_path / "ad/adapter_config.json").read_text())
    (tmp_path / "ad/adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ConfigError, match="use_dora=True is not supported"):
        load_adapter(gpt(), tmp_path / "ad")


# ---- Hugging Face PEFT, both ways ---------------------------------------------------------------

def hf_llama(tmp_path):
    """(peft, a tiny random transformers Llama saved to tmp_path/hf, our GPT loaded from it);
    skips where the dev extra (transformers, peft) is not installed."""
    from lmstack.interop import load_hf_model
    transformers, peft = pytest.importorskip("transformers"), pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    theirs = transformers.LlamaForCausalLM(cfg).eval()
    theirs.save_pretrained(tmp_path / "hf")
    return peft, theirs, load_hf_model(tmp_path / "hf")


def test_our_adapter_loads_in_peft_with_the_same_logits(tmp_path):
    peft, theirs, ours = hf_llama(tmp_path)
    x = ids()
    apply_lora(ours, LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "gate_proj")))
    randomize_b(ours)
    save_adapter(ours, tmp_path / "ad", base_model_name_or_path=str(tmp_path / "hf"))
    with torch.no_grad():
        base = theirs(x).logits
        peft_model = peft.PeftModel.from_pretrained(theirs, tmp_path / "ad").eval()
        expected = peft_model(x).logits
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=0)
    assert (expected - base).abs().max() > 1e-2  # negative control: PEFT did apply the update


def test_peft_adapter_loads_here_with_the_same_logits(tmp_path):
    peft, theirs, ours = hf_llama(tmp_path)
    x = ids()
    config = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "down_proj"],
                             task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(theirs, config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    peft_model.save_pretrained(tmp_path / "ad")
    with torch.no_grad():
        expected = peft_model.eval()(x).logits
        base = ours(x)
        load_adapter(ours, tmp_path / "ad")
        assert sorted(lora_layers(ours))[:3] == ["layers.0.attn.k_proj", "layers.0.attn.q_proj", "layers.0.mlp.down_proj"]
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=0)
        assert (ours(x) - base).abs().max() > 1e-2  # negative control
        merge_lora(ours)
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=0)
