"""`lmstack serve --lora NAME=DIR ...`: the request's `model` picks an adapter (or the base),
concurrent requests for different adapters share batches, and each reply equals what the merged
model (merge_lora) serves alone; /v1/models lists the base and its adapters; an unknown model is
a 404 naming those served, and the server goes on; bad --lora flags fail before serving. An
int4 base serves its dequantized floats with the adapters merged; Houlsby, prompt-tuning and
QLoRA adapters are refused per row, naming `--adapter DIR`, which serves each as the adapted
model in this process answers."""

from __future__ import annotations

import copy
import json
import re
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from lmstack.cli import build_parser, main
from lmstack.infer import Engine
from lmstack.infer.quantize import dequantize_model
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import load_model, save_model
from lmstack.posttrain.peft import (
    HoulsbyConfig,
    LoraConfig,
    PromptTuningConfig,
    QuantConfig,
    apply_lora,
    apply_peft,
    load_adapter,
    peft_parameters,
    save_adapter,
    save_peft,
    unload_lora,
)
from lmstack.posttrain.peft.multi_lora import MultiLoraLinear
from lmstack.serve.app import ServerConfig
from lmstack.serve.commands import load_engine, parse_lora_flags
from tests.posttrain.test_lora import randomize_b
from tests.serve.conftest import serve

torch.set_num_threads(1)

PROMPTS = ["import os\nimport", "def f(x):\n    return", "class A:\n    def", "for i in range("]


def gpt(vocab: int, n_embd: int = 32) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=n_embd,
                         position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                         tie_embeddings=False)).eval()


@pytest.fixture(scope="module")
def dirs(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-lora")
    base = gpt(tok.vocab_size)
    save_model(root / "base", base)
    tok.save(root / "base" / "tokenizer.json")
    out = {"base": str(root / "base")}
    for i, (name, cfg) in enumerate({"sql": LoraConfig(r=4, target_modules=("q_proj", "v_proj")),
                                     "poem": LoraConfig(r=8, alpha=24, target_modules=("o_proj", "down_proj",
                                                                                         "q_proj"))}.items()):
        model = apply_lora(copy.deepcopy(base), cfg)
        randomize_b(model, seed=20 + i)
        out[name] = str(save_adapter(model, root / name))
    wide = apply_lora(gpt(tok.vocab_size, n_embd=48), LoraConfig(r=4))
    out["wide"] = str(save_adapter(wide, root / "wide"))
    return out


def serve_args(dirs, *extra: str):
    return build_parser().parse_args(["serve", "--model", dirs["base"], "--lora", f"sql={dirs['sql']}",
                                      "--lora", f"poem={dirs['poem']}", *extra])


def merged_engine(dirs, name: str | None) -> Engine:
    adapt = None if name is None else (lambda m: unload_lora(load_adapter(m, dirs[name])))
    return Engine.load(dirs["base"], adapt=adapt)


def test_requests_pick_adapters_and_share_batches(dirs):
    args = serve_args(dirs)
    engine = load_engine(args, parse_lora_flags(args.lora))
    mixed = []  # per-row adapter ids of the batches whose rows ran different adapters
    layer = next(m for m in engine.model.modules() if isinstance(m, MultiLoraLinear))
    layer.register_forward_pre_hook(
        lambda m, _: mixed.append(m.variants.ids.tolist()) if m.variants.ids is not None and m.variants.same is None else None)
    jobs = [(p, model) for p in PROMPTS for model in ("base", "sql", "poem", None)]
    with serve(engine, ServerConfig(model_name="base", max_batch=8)) as server:
        listed = httpx.get(server.url + "/v1/models").json()["data"]
        assert [(m["id"], m.get("parent")) for m in listed] == [("base", None), ("sql", "base"), ("poem", "base")]

        def complete(job):
            prompt, model = job
            body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
                    **({"model": model} if model else {})}
            return httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(complete, jobs))
    engines = {name: merged_engine(dirs, None if name == "base" else name) for name in ("base", "sql", "poem")}
    texts = {}
    for (prompt, model), reply in zip(jobs, replies):
        alone = engines[model or "base"].generate(prompt, temperature=0, max_new_tokens=24, ignore_eos=True)
        assert reply["choices"][0]["text"] == alone.text, (prompt, model)
        assert reply["model"] == (model or "base")
        texts.setdefault(prompt, set()).add(alone.text)
    assert all(len(t) == 3 for t in texts.values())  # the adapters change the replies
    assert any(len(set(ids)) > 1 for ids in mixed)   # rows of different adapters shared a batch


def test_unknown_model_is_a_404_naming_the_served_ones(dirs):
    args = serve_args(dirs)
    engine = load_engine(args, parse_lora_flags(args.lora))
    with serve(engine, ServerConfig(model_name="base")) as server:
        r = httpx.post(server.url + "/v1/chat/completions", json={
            "model": "sqll", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 404
        error = r.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert all(repr(n) in error["message"] for n in ("base", "sql", "poem")), error["message"]
        r = httpx.post(server.url + "/v1/chat/completions", json={
            "model": "poem", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["model"] == "poem"   # the server goes on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flags, message", [
    (["--lora", "sql"], "give NAME=DIR"),
    (["--lora", "a=x", "--lora", "a=y"], "given twice"),
    (["--served-model-name", "sql", "--lora", "sql=x"], "the base model's name"),
    (["--lora", "wide=WIDE"], "adapter 'wide'.*another base"),
])
def test_bad_lora_flags_fail_before_serving(dirs, capsys, flags, message):
    flags = [f.replace("WIDE", dirs["wide"]) for f in flags]
    assert main(["serve", "--model", dirs["base"], "--port", str(free_port()), *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


@pytest.fixture(scope="module")
def q4(dirs, tmp_path_factory):
    """The base quantized to int4 by `lmstack quantize` (what a GGUF file's Q4_1 loads as)."""
    out = tmp_path_factory.mktemp("q4") / "q4"
    assert main(["quantize", "--model", dirs["base"], "--out", str(out), "--bits", "4", "--group-size", "32"]) == 0
    return str(out)


def test_int4_base_serves_its_floats_with_the_adapters(dirs, q4):
    args = build_parser().parse_args(["serve", "--model", q4, "--lora", f"poem={dirs['poem']}"])
    engine = load_engine(args, parse_lora_flags(args.lora))
    merged = Engine.load(q4, adapt=lambda m: unload_lora(load_adapter(dequantize_model(m), dirs["poem"])))
    quantized = Engine.load(q4)
    with serve(engine, ServerConfig(model_name="q4")) as server:
        for prompt in PROMPTS[:2]:
            body = {"prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True, "model": "poem"}
            text = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
            want = merged.generate(prompt, temperature=0, max_new_tokens=16, ignore_eos=True).text
            base = quantized.generate(prompt, temperature=0, max_new_tokens=16, ignore_eos=True).text
            assert text == want and text != base, (prompt, text, want, base)


def other_adapters(dirs, root) -> dict:
    """A Houlsby, a prompt-tuning and a QLoRA adapter of the base, nonzero, and each model in process."""
    out = {}
    for name, cfg, quant, std in (("houlsby", HoulsbyConfig(bottleneck=8), None, 0.3),
                                  ("prompt", PromptTuningConfig(num_virtual_tokens=4), None, 3.0),
                                  ("qlora", LoraConfig(r=4), QuantConfig("nf4"), 0.3)):
        model = apply_peft(load_model(dirs["base"]), cfg, quant)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in peft_parameters(model):
                p.copy_(torch.randn(p.shape, generator=g) * std)
        d = save_peft(model, root / name)
        if quant is not None:  # what `lmstack sft` writes beside a QLoRA adapter
            (d / "train_config.json").write_text(json.dumps({"peft": {"method": "qlora", "quant": "nf4"}}))
        out[name] = (str(d), model.eval())
    return out


@pytest.fixture(scope="module")
def others(dirs, tmp_path_factory):
    return other_adapters(dirs, tmp_path_factory.mktemp("other-adapters"))


@pytest.mark.parametrize("name, message", [("houlsby", "HOULSBY adapter"), ("prompt", "PROMPT_TUNING adapter"),
                                           ("qlora", "QLoRA adapter, trained over a nf4 base")])
def test_per_row_refuses_other_adapters_naming_the_fix(dirs, others, capsys, name, message):
    assert main(["serve", "--model", dirs["base"], "--port", str(free_port()), "--lora", f"x={others[name][0]}"]) == 2
    err = capsys.readouterr().err
    assert message in err and f"--adapter {others[name][0]}" in err, err


@pytest.mark.parametrize("name", ["houlsby", "prompt", "qlora"])
def test_adapter_flag_serves_any_peft_type(dirs, others, name):
    directory, model = others[name]
    args = build_parser().parse_args(["serve", "--model", dirs["base"], "--adapter", directory])
    engine = load_engine(args, parse_lora_flags(args.lora))
    alone = Engine(model, engine.tokenizer)
    texts = set()
    with serve(engine, ServerConfig(model_name="base", max_batch=4)) as server:
        def complete(prompt):
            body = {"prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
            return httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]

        with ThreadPoolExecutor(4) as pool:   # rows batched together, and the prefix cache on
            replies = list(pool.map(complete, PROMPTS + PROMPTS[:2]))
    for prompt, text in zip(PROMPTS + PROMPTS[:2], replies):
        want = alone.generate(prompt, temperature=0, max_new_tokens=16, ignore_eos=True).text
        assert text == want, (name, prompt, text, want)
        texts.add(want != Engine.load(dirs["base"]).generate(prompt, temperature=0, max_new_tokens=16,
                                                              ignore_eos=True).text)
    assert texts == {True}  # the adapter changed every reply
