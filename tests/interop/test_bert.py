"""Hugging Face BERT checkpoints built inside the test (random weights, no downloads): import
them (BertModel, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification), match every
layer's hidden states, the pooled vector and the logits on a padded batch with two segments,
export back and match again; `lmstack convert` both ways; options we do not model are refused."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")  # the dev extra; always installed in CI

from lmstack.cli import main  # noqa: E402
from lmstack.errors import ConfigError  # noqa: E402
from lmstack.interop.bert import export_bert  # noqa: E402
from lmstack.models import Encoder, EncoderConfig  # noqa: E402
from lmstack.models.directory import load_model  # noqa: E402
from lmstack.models.mlp import gelu_tanh  # noqa: E402

V = 64
# initializer_range 0.2, not 0.02: activations of a trained model's size, where the exact and the
# tanh GELU differ by far more than the 1e-5 bound (test_the_bound_notices_the_wrong_gelu).
SMALL = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=24, initializer_range=0.2)
KINDS = {  # name: (transformers class, config overrides)
    "model": ("BertModel", {}),
    "mlm": ("BertForMaskedLM", {}),
    "mlm-untied-tanh-gelu": ("BertForMaskedLM", {"tie_word_embeddings": False, "hidden_act": "gelu_new",
                                                 "type_vocab_size": 3, "layer_norm_eps": 1e-6}),
    "pretraining": ("BertForPreTraining", {}),
    "classification": ("BertForSequenceClassification", {"num_labels": 3}),
}


def hf_bert(kind: str):
    torch.manual_seed(0)
    cls, overrides = KINDS[kind]
    model = getattr(transformers, cls)(transformers.BertConfig(**{**SMALL, **overrides}))
    with torch.no_grad():  # HF initializes norms to 1 and biases to 0: make them count
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def batch() -> dict[str, torch.Tensor]:
    """Three rows right-padded to 11 (lengths 11, 7, 3), segment B from position 5."""
    ids = torch.randint(1, V, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(11) < torch.tensor([[11], [7], [3]])).long()
    types = (torch.arange(11) >= 5).long().expand(3, 11) * mask
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


def bert_outputs(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a transformers BERT computes: hidden states of every layer, pooled vector, logits."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    found = {f"hidden_{i}": h for i, h in enumerate(out.hidden_states)}
    if getattr(out, "pooler_output", None) is not None:
        found["pooled"] = out.pooler_output
    for key in ("logits", "prediction_logits"):
        if getattr(out, key, None) is not None:
            found["logits"] = getattr(out, key)
    return found


def our_outputs(model: Encoder, inputs: dict[str, torch.Tensor], keys) -> dict[str, torch.Tensor]:
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    with torch.no_grad():
        out = model.encode(*args, output_hidden_states=True)
        found = {f"hidden_{i}": h for i, h in enumerate(out.hidden_states)}
        found.update(pooled=out.pooled, logits=model(*args))
    return {k: found[k] for k in keys}


def assert_outputs_equal(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=0, msg=key)


@pytest.mark.parametrize("kind", list(KINDS))
def test_import_matches_transformers_then_export_round_trips(kind, tmp_path):
    theirs = hf_bert(kind)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")  # what --model DIR opens
    assert isinstance(ours, Encoder)
    inputs = batch()
    expected = bert_outputs(theirs, inputs)
    assert len([k for k in expected if k.startswith("hidden_")]) == 3  # embeddings + 2 layers
    assert_outputs_equal(our_outputs(ours, inputs, expected), expected)

    export_bert(ours, tmp_path / "back")
    back_class = "BertForMaskedLM" if kind == "pretraining" else KINDS[kind][0]  # no NSP head
    again = getattr(transformers, back_class).from_pretrained(tmp_path / "back").eval()
    again_out = bert_outputs(again, inputs)
    assert_outputs_equal(again_out, {k: v for k, v in expected.items() if k in again_out})


def test_the_bound_notices_the_wrong_gelu(tmp_path):
    # Negative control for the 1e-5 bound: BERT's "gelu" is the exact erf GELU, and the tanh
    # approximation (GPT-2's) in its place moves the hidden states by more than the bound.
    hf_bert("model").save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    inputs = batch()
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    with torch.no_grad():
        exact = ours.encode(*args).last_hidden_state
        for block in ours.layers:
            block.mlp.act = gelu_tanh
        assert (ours.encode(*args).last_hidden_state - exact).abs().max() > 1e-5


def test_old_checkpoint_names_load(tmp_path):
    # bert.-prefixed BertModel weights, TF-era LayerNorm.gamma/beta and a saved position_ids
    # buffer, as older checkpoints (all-MiniLM-L6-v2's among them) carry.
    theirs = hf_bert("model")
    theirs.save_pretrained(tmp_path / "hf")
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    tf_names = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}
    renamed = {"bert." + re.sub("|".join(tf_names), lambda m: tf_names[m[0]], k): v for k, v in tensors.items()}
    renamed["bert.embeddings.position_ids"] = torch.arange(24)[None]
    save_file(renamed, tmp_path / "hf" / "model.safetensors")
    inputs = batch()
    expected = bert_outputs(theirs, inputs)
    assert_outputs_equal(our_outputs(load_model(tmp_path / "hf"), inputs, expected), expected)


def test_cli_convert_both_ways_keeps_outputs_and_tokenizer_files(tmp_path):
    theirs = hf_bert("mlm")
    theirs.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    assert main(["convert", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "ours")]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "encoder"
    assert (tmp_path / "ours" / "vocab.txt").read_text() == (tmp_path / "hf" / "vocab.txt").read_text()
    inputs = batch()
    expected = bert_outputs(theirs, inputs)
    assert_outputs_equal(our_outputs(load_model(tmp_path / "ours"), inputs, expected), expected)
    assert main(["convert", "--src", str(tmp_path / "ours"), "--dst", str(tmp_path / "back"), "--to", "hf"]) == 0
    assert (tmp_path / "back" / "tokenizer_config.json").is_file()
    again = transformers.BertForMaskedLM.from_pretrained(tmp_path / "back").eval()
    assert_outputs_equal(bert_outputs(again, inputs), expected)


@pytest.mark.parametrize("field, value", [
    ("position_embedding_type", "relative_key"),
    ("position_embedding_type", "relative_key_query"),
    ("is_decoder", True),
    ("add_cross_attention", True),
    ("hidden_act", "silu"),
    ("architectures", ["BertForTokenClassification"]),
])
def test_options_we_do_not_model_are_refused_by_name(field, value, tmp_path, capsys):
    hf_bert("model").save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ConfigError, match=rf"{field}=.*is not supported"):
        load_model(tmp_path / "hf")
    assert main(["convert", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "ours")]) == 2
    assert f"{field}=" in capsys.readouterr().err


def test_a_text_longer_than_the_positions_is_refused(tmp_path):
    hf_bert("model").save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    ours(torch.ones(1, 24, dtype=torch.long))
    with pytest.raises(ConfigError, match="input of 25 tokens is longer than the encoder's 24 positions"):
        ours(torch.ones(1, 25, dtype=torch.long))


def test_export_refuses_an_encoder_that_is_not_a_bert(tmp_path):
    model = Encoder(EncoderConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                  norm_position="pre", embedding_norm=False))
    with pytest.raises(ConfigError, match="norm_position='pre'.*BERT needs 'post'"):
        export_bert(model, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
