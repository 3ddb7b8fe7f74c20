"""Hugging Face checkpoints built inside the test (random weights, no downloads): import them,
match logits and greedy tokens, export back and match again; tokenizers; bad directories."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the dev extra; always installed in CI

from lmstack.cli import main  # noqa: E402
from lmstack.errors import ConfigError  # noqa: E402
from lmstack.infer import Engine  # noqa: E402
from lmstack.interop import convert, export_hf, load_hf_model  # noqa: E402
from lmstack.models.directory import load_model  # noqa: E402

V = 96
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=128)


def hf_model(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                      resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
        return transformers.GPT2LMHeadModel(cfg)
    if kind == "llama-gqa-untied":
        cfg = transformers.LlamaConfig(**SMALL, num_key_value_heads=2, rope_theta=5e5,
                                       tie_word_embeddings=False)
    elif kind == "llama-tied":
        cfg = transformers.LlamaConfig(**SMALL, num_key_value_heads=4, tie_word_embeddings=True)
    elif kind == "llama3-scaling":
        cfg = transformers.LlamaConfig(**{**SMALL, "max_position_embeddings": 256}, num_key_value_heads=1,
                                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5,
                                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 16})
    elif kind == "linear-scaling":
        cfg = transformers.LlamaConfig(**SMALL, num_key_value_heads=2,
                                       rope_scaling={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True)
    elif kind == "mistral":
        cfg = transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=64)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # HF initializes norms to 1 and biases to 0: make them count
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


KINDS = ["gpt2", "llama-gqa-untied", "llama-tied", "llama3-scaling", "linear-scaling", "qwen2", "mistral"]


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_import_matches_logits_and_greedy_tokens_then_export_round_trips(kind, tmp_path):
    theirs = hf_model(kind)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf")
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(ids).logits
        torch.testing.assert_close(ours(ids), expected, atol=1e-4, rtol=0)
    prompt = ids[0, :8].tolist()
    assert Engine(ours).generate(prompt, temperature=0, max_new_tokens=32).tokens == hf_greedy(theirs, prompt, 32)

    export_hf(ours, None, tmp_path / "back")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, expected, atol=1e-4, rtol=0)


def test_sharded_checkpoint_and_model_dir_routes(tmp_path):
    theirs = hf_model("llama-gqa-untied")
    theirs.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ids = torch.randint(0, V, (1, 16))
    with torch.no_grad():
        expected = theirs(ids).logits
        torch.testing.assert_close(load_model(tmp_path / "hf")(ids), expected, atol=1e-4, rtol=0)
    convert(tmp_path / "hf", tmp_path / "ours", to="lmstack")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "gpt"
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "ours")(ids), expected, atol=1e-4, rtol=0)
    convert(tmp_path / "ours", tmp_path / "back", to="hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, expected, atol=1e-4, rtol=0)


def test_our_trained_style_gpt_exports_with_its_tokenizer(tok, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    from lmstack.models import GPT, GPTConfig

    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                         n_embd=32, position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                         tie_embeddings=True)).eval()
    export_hf(ours, tok, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    text = "naïve café 你好 🙂 e\u0301 def f(x):\n\treturn x ** 2  # ok"
    ids = HFTokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json")).encode(text).ids
    assert ids == tok.encode(text)
    with torch.no_grad():
        torch.testing.assert_close(theirs(torch.tensor([ids])).logits, ours(torch.tensor([ids])), atol=1e-4, rtol=0)
    engine = Engine.load(tmp_path / "hf")  # an HF directory, converted on the fly
    assert engine.tokenizer.encode(text) == ids and engine.eos_ids == [tok.eot_id]


def test_imported_hf_tokenizer_matches_tokenizers(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["def hello(name):\n    return f'hi {name}'\n", "naïve café 你好 世界 🙂🙂", "x = [i ** 2 for i in range(10)]"] * 30
    hf.train_from_iterator(corpus, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    from lmstack.tokenizer import Tokenizer

    ours = Tokenizer.load(tmp_path / "tokenizer.json")
    for text in ["naïve café 你好 🙂 and e\u0301", "def main():\n\tprint('ok')  # 世界", "<|endoftext|>x"]:
        assert ours.encode(text, allowed_special="all") == hf.encode(text).ids


def test_cli_convert_and_generate_from_an_hf_directory(tmp_path, capsys):
    hf_model("gpt2").save_pretrained(tmp_path / "hf")
    assert main(["convert", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "ours"), "--to", "lmstack"]) == 0
    assert (tmp_path / "ours" / "model.safetensors").exists()
    assert main(["convert", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "hf"), "--to", "lmstack"]) == 2
    assert "same directory" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["no-config", "bad-arch", "bad-option", "bad-rope", "missing-tensor",
                                  "shape", "corrupt", "no-weights"])
def test_bad_directories_give_clear_errors(case, tmp_path):
    d = tmp_path / "hf"
    hf_model("llama-tied").save_pretrained(d)
    cfg_path, weights = d / "config.json", d / "model.safetensors"
    cfg = json.loads(cfg_path.read_text())
    expect = {"no-config": "config.json", "bad-arch": "model_type 't5' is not supported",
              "bad-option": "hidden_act='gelu' is not supported", "bad-rope": "rope_type='yarn'",
              "missing-tensor": "lacks 1 tensors", "shape": "has shape",
              "corrupt": "model.safetensors cannot be read", "no-weights": "no model.safetensors"}[case]
    if case == "no-config":
        cfg_path.unlink()
    elif case == "bad-arch":
        cfg_path.write_text(json.dumps({**cfg, "model_type": "t5"}))
    elif case == "bad-option":
        cfg_path.write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    elif case == "bad-rope":
        cfg_path.write_text(json.dumps({**cfg, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}))
    elif case in ("missing-tensor", "shape"):
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        if case == "missing-tensor":
            tensors.pop("model.layers.1.mlp.up_proj.weight")
        else:
            tensors["model.norm.weight"] = torch.ones(31)
        save_file(tensors, weights, metadata={"format": "pt"})
    elif case == "corrupt":
        weights.write_bytes(weights.read_bytes()[:200])
    elif case == "no-weights":
        weights.unlink()
    with pytest.raises(ConfigError, match=expect.replace("(", r"\(")):
        load_hf_model(d) if case != "no-config" else load_model(d)
    shutil.rmtree(d)


def test_chat_template_and_generation_config_travel_with_convert(tmp_path):
    from lmstack.interop import chat_template, eos_token_ids

    d = tmp_path / "hf"
    hf_model("qwen2").save_pretrained(d)
    template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 7]}))
    assert chat_template(d) == template and eos_token_ids(d) == [5, 7]
    convert(d, tmp_path / "ours", to="lmstack")
    assert chat_template(tmp_path / "ours") == template and eos_token_ids(tmp_path / "ours") == [5, 7]
    assert Engine.load(d).eos_ids == [5, 7]
