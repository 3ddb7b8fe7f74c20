"""Fine-tuning methods side by side (issue 17): held-out exact match on arithmetic word problems
before fine-tuning and after full fine-tuning, LoRA (r 8, r 32), QLoRA (NF4), prompt tuning and
adapters, with trainable parameters, weight memory, peak memory, seconds per step and wall time.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/finetune.py                  # both models
    .venv/bin/python benchmarks/finetune.py --models ours --methods full lora-r8 --steps 40

The task (lmstack/data/word_problems.py): two-digit additions and subtractions worded as chats,
"answer with the number only"; train and test from disjoint templates and disjoint operand
pairs, so a test question was never seen. Models: (a) `ours`, the quickstart's GPT pretrained
here on the Python standard library (runs/quickstart; made by `lmstack quickstart` first if
missing), which has never seen English; (b) `smollm2`, SmolLM2-135M-Instruct from its wheel.
Each method is one `lmstack sft` run in its own process (so peak RSS is its own: os.wait4),
same data, steps and batch; the score is greedy decoding of every test question with the
tuned model (PEFT: the adapter loaded onto its base), exact match of the reply.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lmstack.data.word_problems import exact_match, word_problems
from lmstack.infer import Engine
from lmstack.models.directory import (
    load_model,
    load_tokenizer,
    model_chat_template,
    model_eos_ids,
)
from lmstack.posttrain.sft_data import tokenize_record
from lmstack.posttrain.sft_run import answer_settings
from lmstack.train.checkpoint import read_log

ALL_LINEAR = "['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']"
# method -> `lmstack sft --set` overrides; learning rates per method from short sweeps on `ours`
# (PEFT methods train few parameters and want a larger step than full fine-tuning).
METHODS: dict[str, list[str]] = {
    "full": ["peft.method=full"],
    "lora-r8": ["peft.method=lora", "peft.r=8", "peft.alpha=16", f"peft.target_modules={ALL_LINEAR}"],
    "lora-r32": ["peft.method=lora", "peft.r=32", "peft.alpha=64", f"peft.target_modules={ALL_LINEAR}"],
    "qlora-nf4": ["peft.method=qlora", "peft.quant=nf4", "peft.r=8", "peft.alpha=16",
                  f"peft.target_modules={ALL_LINEAR}"],
    # int4 in groups of 32 holds SmolLM2's Q4_1 weights exactly: QLoRA over the file's own 4 bits
    "qlora-int4": ["peft.method=qlora", "peft.quant=int4", "peft.group_size=32", "peft.r=8",
                   "peft.alpha=16", f"peft.target_modules={ALL_LINEAR}"],
    "prompt": ["peft.method=prompt", "peft.virtual_tokens=20"],
    "adapters": ["peft.method=adapters", "peft.bottleneck=64"],
}
LR = {  # (model, method) -> peak learning rate
    ("ours", "full"): 1e-3, ("smollm2", "full"): 5e-5,
    ("ours", "prompt"): 3e-2, ("smollm2", "prompt"): 1e-1,
}
PEFT_LR = {"ours": 3e-3, "smollm2": 1e-3}
MODELS = {"ours": "runs/quickstart", "smollm2": "smollm2"}


def write_data(out: Path, n_train: int, n_test: int, seed: int) -> tuple[Path, list[dict]]:
    """train.jsonl of n_train chats (the sft run holds 10% out for validation), and the test set."""
    out.mkdir(parents=True, exist_ok=True)
    train = out / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in word_problems(n_train, "train", seed)))
    return train, word_problems(n_test, "test", seed)


def ensure_ours(path: str) -> str:
    """The quickstart's model directory, trained now if it is not there."""
    if not (Path(path) / "model.safetensors").exists():
        print(f"no model in {path}: running the quickstart to pretrain one", flush=True)
        subprocess.run([sys.executable, "-m", "lmstack.cli", "quickstart", "--out", path], check=True)
    return path


@torch.no_grad()
def score(model, base: str, records: list[dict], batch: int = 50) -> float:
    """Exact match (percent) of greedy replies to the records' questions."""
    tok, template = load_tokenizer(base), model_chat_template(base)
    engine = Engine(model, tok, eos_ids=model_eos_ids(base))
    settings = answer_settings(template, tok, max_new_tokens=8)
    prompts = [tokenize_record(r, tok, template).prompt_ids() for r in records]
    hits = 0
    for i in range(0, len(prompts), batch):
        outs = engine.generate(prompts[i:i + batch], **settings)
        hits += sum(exact_match(o.text, r) for o, r in zip(outs, records[i:i + batch]))
    return 100.0 * hits / len(records)


def tuned_model(base: str, method: str, out: Path):
    """The fine-tuned model as it will be used: OUT itself, or the adapter on its base."""
    if method == "full":
        return load_model(out)
    from lmstack.infer.quantize import dequantize_model
    from lmstack.posttrain.peft import QuantConfig, load_peft

    # QLoRA's adapter learned against the 4-bit base: score it over that base, as trained.
    quant = {"qlora-nf4": QuantConfig(method="nf4"),
             "qlora-int4": QuantConfig(method="int4", group_size=32)}.get(method)
    return load_peft(dequantize_model(load_model(base)), out, quant)


def run_method(base: str, name: str, method: str, data: Path, out: Path, args) -> dict:
    """One `lmstack sft` run in a child process: its wall time, peak RSS and log."""
    lr = args.lr.get(method) or LR.get((name, method), PEFT_LR[name])
    cmd = [sys.executable, "-m", "lmstack.cli", "sft", "--model", base, "--data", str(data),
           "--out", str(out), "--threads", str(args.threads), "--set", *METHODS[method],
           f"steps={args.steps}", f"batch_size={args.batch_size}", f"block_size={args.block_size}",
           f"schedule.lr={lr}", f"schedule.min_lr={lr / 10}", "schedule.warmup_steps=10",
           f"eval_every={args.steps}", "save_every=100000", "progress=false", f"precision={args.precision}",
           "optim.grad_clip=1.0"]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name}/{method} failed: {' '.join(cmd)}")
    log = read_log(out)
    timed = [r for r in log if "tokens_per_s" in r]
    tokens_per_step = args.batch_size * args.block_size
    summary = json.loads((out / "sft_summary.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            # the median of the logged intervals: one slowed by other load moves it little
            "s_per_step": statistics.median(tokens_per_step / r["tokens_per_s"] for r in timed)
            if timed else float("nan"),
            "val_loss": next((r["val_loss"] for r in reversed(log) if "val_loss" in r), float("nan")),
            **summary}


def bench_model(name: str, args, data: Path, test: list[dict]) -> list[dict]:
    base = ensure_ours(args.ours) if name == "ours" else MODELS[name]
    from lmstack.infer.quantize import dequantize_model

    rows = [{"model": name, "method": "base", "em": score(dequantize_model(load_model(base)), base, test)}]
    print(f"{name}: base exact match {rows[0]['em']:.1f}%", flush=True)
    for method in args.methods:
        out = Path(args.out) / name / method
        result = run_method(base, name, method, data, out, args)
        result["em"] = score(tuned_model(base, method, out), base, test)
        rows.append({**result, "model": name, "method": method})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | method | exact match % | trainable params | weights MB | peak RSS MB | "
             "s/step | wall s | val loss |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "base":
            lines.append(f"| {r['model']} | base (no fine-tuning) | {r['em']:.1f} | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['method']} | {r['em']:.1f} | {r['trainable']:,} | "
                     f"{r['weight_bytes'] / 2**20:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['s_per_step']:.2f} | {r['wall_s']:.0f} | {r['val_loss']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--train", type=int, default=2000, help="training chats (10%% held out)")
    p.add_argument("--test", type=int, default=200, help="test chats (other templates and numbers)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-finetune")
    p.add_argument("--ours", default=MODELS["ours"], help="our pretrained model directory")
    p.add_argument("--lr", nargs="*", default=[], metavar="METHOD=LR",
                   help="peak learning rates overriding the table above, e.g. lora-r8=3e-3")
    args = p.parse_args()
    args.lr = {k: float(v) for k, _, v in (item.partition("=") for item in args.lr)}
    torch.set_num_threads(args.threads)
    data, test = write_data(Path(args.out), args.train, args.test, args.seed)
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}; {args.train} train / {args.test} "
          f"test chats, {args.steps} steps x {args.batch_size} rows x {args.block_size} tokens, "
          f"{args.precision}", flush=True)
    rows = [r for name in args.models for r in bench_model(name, args, data, test)]
    print(table(rows))


if __name__ == "__main__":
    main()
