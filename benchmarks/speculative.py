"""Speculative decoding benchmark: plain greedy vs a draft model (γ = 2..6), prompt lookup and
Medusa heads, batch 1 on the CPU, on a repetitive code prompt and a non-repetitive one.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/speculative.py [--out runs/spec-bench]
        [--target DIR --draft DIR] [--new-tokens 128] [--repeats 3] [--threads 2]

Without --target/--draft it makes everything it needs in --out, reusing what is there:
1. a byte-level BPE tokenizer (vocab 4096) and token shards of the default corpus (the Python
   standard library), as the quickstart does;
2. a target GPT (4 layers x 256) and a draft GPT (2 layers x 128), same tokenizer, same data,
   trained with `lmstack train` for --target-minutes / --draft-minutes;
3. Medusa heads (4) on the frozen target (`lmstack train-heads`, --heads-minutes).

Then, for each prompt: plain `Engine.generate(temperature=0, ignore_eos=True)` tokens/s, and for
every method its acceptance rate (accepted / proposed draft tokens), tokens per target forward
pass, tokens/s, speedup over plain, and whether its output is identical to plain greedy, token
for token. Medians over --repeats runs after a warm-up, methods taking turns within a repeat;
torch threads pinned (--threads). Prints a markdown table and writes OUT/results.json; results
go to docs/speculative.md by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from lmstack.infer import Engine

# Repetitive: code that restates itself (the situation prompt lookup is built for).
CODE_PROMPT = '''class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __repr__(self):
        return f"Point(x={self.x!r}, y={self.y!r})"


class Size:
    def __init__(self, width, height):
        self.width = width
        self.height = height

    def __repr__(self):
        return f"Size(width={self.width!r}, height={self.height!r})"


class Rect:
    def __init__(self, left, top, width, height):
        self.left = left
        self.top = top
'''
# Not repetitive: little of what follows can be copied from the prompt.
PROSE_PROMPT = '''"""Utilities for reading configuration files.

Each reader returns a mapping of section names to options; errors name the file and line.
"""
import '''

PROMPTS = {"code (repetitive)": CODE_PROMPT, "docstring (non-repetitive)": PROSE_PROMPT}


# ---- making the models --------------------------------------------------------------------


def sh(*cmd: str) -> None:
    import subprocess

    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def model_overrides(out: Path, name: str, n_layer: int, n_embd: int, minutes: float) -> list[str]:
    return [f"data={out / 'data'}", f"tokenizer={out / 'tokenizer.json'}", f"out_dir={out / name}",
            f"model.n_layer={n_layer}", f"model.n_embd={n_embd}", "model.n_head=4",
            "model.block_size=256", "block_size=256", "batch_size=4", "steps=600",
            f"max_minutes={minutes}", "eval_every=100", "eval_batches=5", "save_every=100",
            "log_every=20", "progress=false", "schedule.warmup_steps=30", "schedule.total_steps=600"]


def prepare_models(args) -> tuple[Path, Path]:
    """Make (or reuse) the tokenizer, shards, target, draft and Medusa heads in args.out."""
    out = Path(args.out)
    lm = [sys.executable, "-m", "lmstack.cli"]
    if not (out / "tokenizer.json").exists():
        sh(*lm, "tokenizer", "train", "--source", "stdlib", "--vocab-size", "4096",
           "--out", str(out / "tokenizer.json"))
    if not (out / "data" / "report.json").exists():
        sh(*lm, "data", "prepare", "--source", "stdlib", "--tokenizer", str(out / "tokenizer.json"),
           "--out", str(out / "data"), "--quiet")
    for name, n_layer, n_embd, minutes in (("target", 4, 256, args.target_minutes),
                                           ("draft", 2, 128, args.draft_minutes)):
        if not (out / name / "model.safetensors").exists():
            sh(*lm, "train", "--config", "quickstart", "--set",
               *model_overrides(out, name, n_layer, n_embd, minutes), f"threads={args.threads}")
    if not (out / "target" / "medusa_heads.safetensors").exists():
        from lmstack.train.heads import HeadsTrainConfig, train_heads

        train_heads(HeadsTrainConfig(model=str(out / "target"), data=[str(out / "data")], heads=4,
                                     steps=400, batch_size=8, block_size=128, lr=1e-3,
                                     max_minutes=args.heads_minutes, threads=args.threads))
    return out / "target", out / "draft"


# ---- measuring ----------------------------------------------------------------------------


def methods(target: Engine, draft: Engine | None, medusa, gammas=(2, 3, 4, 5, 6)) -> dict:
    """name -> a generate function; None is plain greedy."""
    out: dict = {"plain greedy": None}
    if draft is not None:
        for g in gammas:
            out[f"draft model, γ={g}"] = target.speculative(draft=draft, gamma=g)
    for g in (4, 8, 12, 16):  # a sweep, like the draft model's: longer guesses cost a longer check
        out[f"prompt lookup, n=3, γ={g}"] = target.speculative(prompt_lookup=3, gamma=g)
    if medusa is not None:
        out[f"Medusa, K={medusa.config.num_heads}"] = target.speculative(medusa=medusa)
    return out


def measure(target: Engine, decoders: dict, prompt: str, new_tokens: int, repeats: int) -> list[dict]:
    """Median seconds, stats and identical-output check of each decoder on one prompt."""
    settings = dict(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    times: dict[str, list[float]] = {name: [] for name in decoders}
    outputs: dict[str, tuple] = {}
    for rep in range(repeats + 1):  # the first round is a warm-up
        for name, dec in decoders.items():
            start = time.perf_counter()
            c = (target if dec is None else dec).generate(prompt, **settings)
            seconds = time.perf_counter() - start
            if rep:
                times[name].append(seconds)
            outputs[name] = (c.tokens, None if dec is None else dec.stats)
    plain_tokens = outputs["plain greedy"][0]
    plain_s = statistics.median(times["plain greedy"])
    rows = []
    for name in decoders:
        tokens, stats = outputs[name]
        s = statistics.median(times[name])
        rows.append({"method": name, "tokens": len(tokens), "seconds": s,
                     "tok_per_s": len(tokens) / s, "speedup": plain_s / s,
                     "identical": tokens == plain_tokens,
                     "acceptance": None if stats is None else stats.acceptance_rate,
                     "tokens_per_pass": 1.0 if stats is None else stats.tokens_per_pass})
    return rows


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| prompt | method | acceptance | tokens / target pass | tok/s | speedup | identical to greedy |",
             "|---|---|---|---|---|---|---|"]
    for prompt, rows in results.items():
        for r in rows:
            acc = "—" if r["acceptance"] is None else f"{r['acceptance']:.0%}"
            lines.append(f"| {prompt} | {r['method']} | {acc} | {r['tokens_per_pass']:.2f} | "
                         f"{r['tok_per_s']:.0f} | {r['speedup']:.2f}x | "
                         f"{'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/spec-bench")
    p.add_argument("--target", default=None, help="target model dir (default: train one in --out)")
    p.add_argument("--draft", default=None, help="draft model dir with the target's tokenizer")
    p.add_argument("--medusa", default=None, help="dir with Medusa heads (default: --target's)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target-minutes", type=float, default=6.0)
    p.add_argument("--draft-minutes", type=float, default=3.0)
    p.add_argument("--heads-minutes", type=float, default=2.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    if args.target is None:
        target_dir, draft_dir = prepare_models(args)
    else:
        target_dir, draft_dir = Path(args.target), Path(args.draft) if args.draft else None
    target = Engine.load(target_dir)
    draft = Engine.load(draft_dir) if draft_dir else None
    medusa_dir = Path(args.medusa) if args.medusa else target_dir
    medusa = None
    if (medusa_dir / "medusa_heads.safetensors").exists():
        from lmstack.models.medusa_heads import load_heads

        medusa = load_heads(medusa_dir)
    decoders = methods(target, draft, medusa)
    results = {}
    for name, prompt in PROMPTS.items():
        results[name] = measure(target, decoders, prompt, args.new_tokens, args.repeats)
    text = table(results)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"\n{datetime.date.today()}  {machine}  threads={args.threads}  new tokens={args.new_tokens}  "
          f"repeats={args.repeats} (medians)\ntarget {target_dir}, draft {draft_dir}\n")
    print(text)
    best = max((r for rows in results.values() for r in rows if r["identical"]),
               key=lambda r: r["speedup"])
    print(f"\nbest: {best['method']} at {best['speedup']:.2f}x; total {time.time() - started:.0f} s")
    report = {"date": str(datetime.date.today()), "machine": machine, "args": vars(args),
              "results": results, "table": text}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
