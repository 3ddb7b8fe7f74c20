"""`lmstack sft` end to end on a small Llama-style GPT: it learns (held-out loss falls), writes a
model or an adapter directory that loads back, resumes exactly, weighs micro-batches by their
trained tokens, and refuses bad input before it writes anything."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from lmstack.cli import main
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import load_model, save_model
from lmstack.posttrain.peft import load_adapter
from lmstack.train.checkpoint import STATE, read_log


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"{a} plus {b}?"},
                         {"role": "assistant", "content": str(a + b)}]}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    """A base model directory and a JSONL file of 120 addition chats."""
    root = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=4,
                          n_kv_head=2, n_embd=64, position="rope", norm="rmsnorm", mlp="swiglu",
                          bias=False, dropout=0.0))
    save_model(root / "base", model)
    tok.save(root / "base" / "tokenizer.json")
    rng = random.Random(0)
    lines = [json.dumps(chat(rng.randint(0, 99), rng.randint(0, 99))) for _ in range(120)]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root


def sft(base, out, *settings: str) -> int:
    return main(["sft", "--model", str(base / "base"), "--data", str(base / "data.jsonl"),
                 "--out", str(out), "--threads", "2", "--set", "batch_size=4", "block_size=64",
                 "eval_every=5", "eval_batches=4", "progress=false", "schedule.warmup_steps=0",
                 *settings])


def val_losses(out) -> list[float]:
    return [r["val_loss"] for r in read_log(out) if "val_loss" in r]


def test_full_fine_tuning_learns_and_writes_a_model_directory(base, tmp_path):
    out = tmp_path / "full"
    assert sft(base, out, "steps=15", "schedule.lr=3e-3") == 0
    losses = val_losses(out)
    assert losses[-1] < losses[0] - 0.5, losses
    tuned, plain = load_model(out), load_model(base / "base")
    assert not torch.equal(tuned.lm_head.weight, plain.lm_head.weight)
    assert (out / "tokenizer.json").exists()


def test_lora_writes_an_adapter_that_loads_onto_its_base(base, tmp_path):
    out = tmp_path / "lora"
    assert sft(base, out, "steps=15", "schedule.lr=1e-2", "peft.method=lora", "peft.r=4",
               "peft.target_modules=['q_proj', 'v_proj', 'o_proj']") == 0
    losses = val_losses(out)
    assert losses[-1] < losses[0], losses
    assert not (out / "model.safetensors").exists()  # the base is not copied
    state = torch.load(out / STATE, weights_only=False)["model"]
    assert state and all(".lora_" in k for k in state)  # the checkpoint holds the adapter alone
    model = load_adapter(load_model(base / "base"), out)
    for name, tensor in state.items():
        assert torch.equal(model.get_parameter(name), tensor), name
    assert any(float(t.abs().sum()) > 0 for k, t in load_file(out / "adapter_model.safetensors").items()
               if "lora_B" in k)


@pytest.mark.parametrize(("method", "settings"), [
    ("qlora", ("peft.quant=nf4", "peft.target_modules=['q_proj', 'v_proj', 'o_proj']", "schedule.lr=3e-2")),
    ("qlora", ("peft.quant=int4", "peft.target_modules=['q_proj', 'v_proj']", "schedule.lr=3e-2")),
    ("prompt", ("peft.virtual_tokens=8", "schedule.lr=0.3")),  # Lester et al. train at 0.3
    ("adapters", ("peft.bottleneck=16", "schedule.lr=1e-2")),
])
def test_every_peft_method_learns_and_loads_back(base, tmp_path, method, settings):
    out, untrained = tmp_path / method, tmp_path / "untrained"
    # The held-out loss of the method's starting point: one step at a vanishing learning rate.
    assert sft(base, untrained, "steps=1", f"peft.method={method}", *settings, "schedule.lr=1e-12",
               "schedule.min_lr=0") == 0
    assert sft(base, out, "steps=15", f"peft.method={method}", *settings) == 0
    before, after = val_losses(untrained)[-1], val_losses(out)[-1]
    # Measured drops: QLoRA and adapters ~0.5 nats, prompt tuning (512 numbers) ~0.1.
    assert after < before - 0.05, (before, after)
    state = torch.load(out / STATE, weights_only=False)["model"]
    summary = json.loads((out / "sft_summary.json").read_text())
    assert sum(t.numel() for t in state.values()) == summary["trainable"] < summary["total"] / 4
    from lmstack.posttrain.peft import QuantConfig, load_peft

    quant = QuantConfig(method=settings[0].split("=")[1]) if method == "qlora" else None
    model = load_peft(load_model(base / "base"), out, quant)
    for name, tensor in state.items():  # the adapter on disk is what trained
        assert torch.equal(model.get_parameter(name), tensor), name


@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
def test_resume_continues_exactly(base, tmp_path, method):
    common = ("schedule.total_steps=8", "save_every=4", "schedule.lr=3e-3", f"peft.method={method}")
    assert sft(base, tmp_path / "straight", "steps=8", *common) == 0
    assert sft(base, tmp_path / "split", "steps=4", *common) == 0
    assert sft(base, tmp_path / "split", "steps=8", "resume=true", *common) == 0
    a = {r["step"]: r for r in read_log(tmp_path / "straight")}
    b = {r["step"]: r for r in read_log(tmp_path / "split")}
    assert a.keys() <= b.keys() and all(a[s]["loss"] == b[s]["loss"] for s in a)
    assert a[8]["val_loss"] == b[8]["val_loss"]
    sa = torch.load(tmp_path / "straight" / STATE, weights_only=False)["model"]
    sb = torch.load(tmp_path / "split" / STATE, weights_only=False)["model"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_micro_batches_weigh_what_they_train(base, tmp_path):
    """8 rows in one batch, or in 2 micro-batches of 4, give the same step: the loss is divided
    by the step's trained-target count, not averaged over micro-batches (whose counts differ).
    With optim.eps=1 AdamW's first update is about lr·g rather than lr·sign(g), so comparing the
    weights compares the gradients instead of amplifying the rounding of near-zero ones."""
    common = ("steps=1", "eval_every=0", "schedule.lr=1e-2", "pack=false", "optim.eps=1.0")
    assert sft(base, tmp_path / "one", "batch_size=8", *common) == 0
    assert sft(base, tmp_path / "two", "batch_size=4", "grad_accum=2", *common) == 0
    one, two = read_log(tmp_path / "one")[0]["loss"], read_log(tmp_path / "two")[0]["loss"]
    assert one == pytest.approx(two, rel=1e-6)
    wa, wb = load_model(tmp_path / "one"), load_model(tmp_path / "two")
    for (name, p), q in zip(wa.named_parameters(), wb.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("line", "settings", "words"), [
    ("{not json", (), ["data.jsonl:121", "JSON"]),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), (), ["data.jsonl:121", "robot"]),
    (None, ("peft.method=lora", "peft.target_modules=['nothing_proj']"), ["nothing_proj", "match no"]),
    (None, ("peft.method=lora", "peft.r=65"), ["r=65", "at most 64"]),
    (None, ("peft.method=dora",), ["peft.method", "dora"]),
])
def test_bad_input_is_refused_before_anything_is_written(base, tmp_path, capsys, line, settings, words):
    data = tmp_path / "data.jsonl"
    data.write_text((base / "data.jsonl").read_text() + (line + "\n" if line else ""))
    out = tmp_path / "out"
    code = main(["sft", "--model", str(base / "base"), "--data", str(data), "--out", str(out),
                 "--set", "steps=2", "block_size=64", "progress=false", *settings])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert all(w in err for w in words), err
