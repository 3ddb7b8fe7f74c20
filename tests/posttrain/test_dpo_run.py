"""`lmstack dpo` end to end on a tiny GPT: the first step's loss is log 2 per pair (policy =
reference) with a frozen copy or with LoRA's adapters-off reference (which makes no copy);
training raises the held-out chosen-vs-rejected margin and accuracy on a toy preference; IPO,
SimPO and ORPO run from the same command; OUT is a model or adapter directory; resume is exact;
the log plots; and bad input (identical replies, a malformed line, a reference of another
vocabulary, a reference a loss does not use, nothing left after truncation) is refused before
anything is written."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmstack.cli import main
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import load_model, save_model
from lmstack.train.checkpoint import STATE, read_log
from tests.posttrain.test_reward_run import toy_records, write_jsonl

LOG2 = math.log(2)


def tiny_gpt(vocab: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=32,
                         position="rope", norm="rmsnorm", mlp="swiglu", bias=False))


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    """A tiny base model directory, 96 toy pairs, and a model of another vocabulary."""
    root = tmp_path_factory.mktemp("dpo")
    torch.manual_seed(0)
    save_model(root / "base", tiny_gpt(tok.vocab_size))
    tok.save(root / "base" / "tokenizer.json")
    save_model(root / "other", tiny_gpt(tok.vocab_size + 8))
    write_jsonl(root / "pairs.jsonl", toy_records(96, seed=1))
    return root


COMMON = ("batch_size=8", "block_size=48", "val_fraction=0.25", "eval_every=5", "eval_batches=8",
          "progress=false", "schedule.warmup_steps=0", "log_every=1")


def dpo(base, out, *extra: str, data=None, flags=()) -> int:
    return main(["dpo", "--model", str(base / "base"), "--data", str(data or base / "pairs.jsonl"),
                 "--out", str(out), "--threads", "2", *flags, "--set", *COMMON, *extra])


def records(out) -> dict[int, dict]:
    return {r["step"]: r for r in read_log(out)}


def test_full_dpo_starts_at_log_2_and_raises_the_margin(base, tmp_path):
    out = tmp_path / "full"
    assert dpo(base, out, "steps=10", "schedule.lr=1e-3") == 0
    log = records(out)
    first = log[1]
    assert first["loss"] == pytest.approx(LOG2, abs=1e-6)  # policy == its frozen copy: h = 0
    assert first["margin"] == 0 and first["accuracy"] == 0  # ties count as wrong
    assert log[5]["val_margin"] > 0 and log[10]["val_margin"] > log[5]["val_margin"], log[10]
    assert log[10]["val_accuracy"] >= 0.9 and log[10]["val_loss"] < LOG2 - 0.1, log[10]
    tuned, plain = load_model(out), load_model(base / "base")  # OUT: a model directory
    assert not torch.equal(tuned.wte.weight, plain.wte.weight)


def test_lora_dpo_uses_the_adapters_off_policy_and_makes_no_copy(base, tmp_path, monkeypatch):
    from lmstack.posttrain import dpo_run

    def no_copy(model):
        raise AssertionError("a LoRA policy is its own reference: no copy")

    monkeypatch.setattr(dpo_run, "frozen_copy", no_copy)
    out = tmp_path / "lora"
    assert dpo(base, out, "steps=10", "schedule.lr=2e-2", "peft.method=lora", "peft.r=4",
               "peft.target_modules=['q_proj', 'v_proj', 'o_proj']") == 0
    log = records(out)
    assert log[1]["loss"] == pytest.approx(LOG2, abs=1e-6)  # B = 0: the policy is the base
    assert log[10]["val_margin"] > log[5]["val_margin"] > 0, log[10]
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    state = torch.load(out / STATE, weights_only=False)["model"]
    assert state and all(".lora_" in k for k in state)


def test_a_given_reference_is_used(base, tmp_path):
    out = tmp_path / "given"
    assert dpo(base, out, "steps=1", flags=("--reference", str(base / "base"))) == 0
    assert records(out)[1]["loss"] == pytest.approx(LOG2, abs=1e-6)


@pytest.mark.parametrize("loss", ["ipo", "simpo", "orpo"])
def test_every_variant_trains_from_the_command(base, tmp_path, loss):
    out = tmp_path / loss
    assert dpo(base, out, "steps=5", "schedule.lr=1e-3", f"dpo.loss={loss}") == 0
    log = records(out)
    assert all(math.isfinite(r["loss"]) and "margin" in r for r in log.values())
    assert log[5]["val_margin"] > log[1]["margin"], (log[1], log[5])


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resume_continues_exactly(base, tmp_path, method):
    common = ("schedule.total_steps=6", "save_every=3", "eval_every=3", "schedule.lr=3e-3",
              f"peft.method={method}")
    assert dpo(base, tmp_path / "straight", "steps=6", *common) == 0
    assert dpo(base, tmp_path / "split", "steps=3", *common) == 0
    assert dpo(base, tmp_path / "split", "steps=6", "resume=true", *common) == 0
    a, b = records(tmp_path / "straight"), records(tmp_path / "split")
    for step, record in a.items():
        for key in ("loss", "margin", "chosen_reward", "val_loss", "val_margin"):
            assert record.get(key) == b[step].get(key), (step, key)
    sa = torch.load(tmp_path / "straight" / STATE, weights_only=False)["model"]
    sb = torch.load(tmp_path / "split" / STATE, weights_only=False)["model"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_log_plots_margins_and_accuracy(base, tmp_path):
    out = tmp_path / "run"
    assert dpo(base, out, "steps=3") == 0
    png = tmp_path / "curves.png"
    assert main(["plot", str(out), "--out", str(png), "--metrics", "margin", "val_margin",
                 "accuracy", "val_accuracy", "chosen_reward", "rejected_reward"]) == 0
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(("line", "extra", "flags", "words"), [
    ("{not json", (), (), ["pairs.jsonl:97", "JSON"]),
    (json.dumps({"prompt": "Hi", "chosen": "same", "rejected": "same"}), (), (),
     ["pairs.jsonl:97", "identical"]),
    (None, (), ("--reference", "other"), ["vocabulary", "1032", "1024"]),
    (None, ("dpo.loss=simpo",), ("--reference", "base"), ["simpo uses no reference"]),
    (None, ("block_size=8",), (), ["no preference pair is left", "block_size"]),
    (None, ("dpo.loss=ipo", "dpo.label_smoothing=0.1"), (), ["label_smoothing", "ipo"]),
])
def test_bad_input_is_refused_before_anything_is_written(base, tmp_path, capsys, line, extra,
                                                         flags, words):
    data = tmp_path / "pairs.jsonl"
    data.write_text((base / "pairs.jsonl").read_text() + (line + "\n" if line else ""))
    out = tmp_path / "out"
    flags = tuple(str(base / f) if f in ("other", "base") else f for f in flags)
    code = dpo(base, out, "steps=2", *extra, data=data, flags=flags)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert all(w in err for w in words) and "Traceback" not in err, err
