"""The quickstart: the main job of `make run` — the whole story of an LLM on one CPU.

    lmstack quickstart [--out runs/quickstart] [--minutes 5]

On the built-in corpus by default (the Python standard library of this interpreter, ~31 MB):
1. train a byte-level BPE tokenizer on the cleaned corpus      -> OUT/tokenizer.json
2. clean, deduplicate and tokenize the corpus into shards      -> OUT/data/ (+ report.json)
3. pretrain a small GPT (lmstack/configs/quickstart.toml)      -> OUT/ is its model directory
4. report validation perplexity and bits per byte, draw the loss curve (OUT/loss.png), and
   print samples at a few temperatures.

Every stage reuses what an earlier run left: a finished stage is skipped, an interrupted
training run resumes from its last checkpoint. `lmstack eval --model OUT` and
`lmstack generate --model OUT` take the result.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmstack.data.prepare import REPORT, PrepareConfig, format_report, prepare
from lmstack.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer
from lmstack.infer import sample_text
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.inspect import describe, inspect_text
from lmstack.train import checkpoint as ckpt
from lmstack.train import load_config, train
from lmstack.train.loop import evaluate

SAMPLE = 'def greet(name: str) -> str:\n    """Say hello."""\n    return f"Hello, {name}!"\n'
PROMPTS = ["def ", "import os\n\n", "class "]
TEMPERATURES = [0.0, 0.7, 1.0]


@dataclass
class QuickstartConfig:
    """Where the quickstart writes, and how big a run it makes."""

    out: str = "runs/quickstart"
    sources: tuple[str, ...] = ("stdlib",)
    vocab_size: int = 8192
    steps: int | None = None  # None: the quickstart config's steps
    progress: bool = True


def _stage(n: int, text: str) -> None:
    print(f"\n=== [{n}/4] {text}", flush=True)


def quickstart(cfg: QuickstartConfig) -> dict:
    """Run (or reuse) every stage and print what each produced; returns the key results."""
    out = Path(cfg.out)
    tok_path, data_dir = out / "tokenizer.json", out / "data"

    _stage(1, "tokenizer")
    if tok_path.exists():
        tok = Tokenizer.load(tok_path)
        print(f"reusing {tok_path}")
    else:
        result = train_tokenizer(TokenizerTrainConfig(
            sources=list(cfg.sources), vocab_size=cfg.vocab_size, out=str(tok_path),
            progress=cfg.progress))
        print(result.summary())
        tok = result.tokenizer
    print(describe(tok, longest=5))
    print(inspect_text(tok, SAMPLE))

    _stage(2, "data: clean, dedup, tokenize into shards")
    if (data_dir / REPORT).exists():
        report = json.loads((data_dir / REPORT).read_text())
        print(f"reusing {data_dir}: {report['tokens']} tokens, "
              f"{report['bytes_per_token']:.2f} bytes/token")
    else:
        print(format_report(prepare(PrepareConfig(
            sources=list(cfg.sources), out_dir=str(data_dir), tokenizer=str(tok_path),
            progress=cfg.progress))))

    _stage(3, "pretrain a small GPT")
    overrides = [f"data={data_dir}", f"tokenizer={tok_path}", f"out_dir={out}",
                 f"progress={'true' if cfg.progress else 'false'}"]
    if cfg.steps is not None:
        overrides += [f"steps={cfg.steps}", f"schedule.total_steps={cfg.steps}"]
    train_cfg = load_config("quickstart", overrides)
    done = 0
    if (out / ckpt.STATE).exists():
        done = ckpt.load_train_state(out)["step"]
        train_cfg.resume = True
    if done >= train_cfg.steps:
        print(f"reusing the model in {out} (trained {done} steps)")
    else:
        if done:
            print(f"resuming from step {done}")
        result = train(train_cfg, sample=sample_text)
        print(f"trained {result.step} steps in {result.seconds:.0f} s, "
              f"{result.tokens_per_second:,.0f} tokens/s")

    _stage(4, "evaluate and sample")
    from lmstack.models.directory import load_model

    model = load_model(out)
    from lmstack.data.loader import TokenLoader

    val = TokenLoader(data_dir, "val", train_cfg.batch_size, train_cfg.block_size,
                      shuffle=False, tokenizer=tok)
    metrics = evaluate(model, val, tok, train_cfg.eval_batches, torch.device("cpu"), train_cfg)
    print(f"validation: loss {metrics['val_loss']:.3f} nats/token, perplexity "
          f"{metrics['val_ppl']:.1f}, {metrics['val_bpb']:.3f} bits per byte")
    from lmstack.train.plot import plot_runs  # matplotlib: not on every `lmstack` start

    png = plot_runs([out], out / "loss.png")
    print(f"loss curve: {png}")
    for prompt in PROMPTS[:2]:
        for temperature in TEMPERATURES:
            text = sample_text(model, tok, prompt, 60, temperature)
            print(f"\n--- prompt {prompt!r}, temperature {temperature} ---\n{prompt}{text}")
    print(f"\nmodel directory: {out}  (try: lmstack eval --model {out} --data FILE)")
    return {"model": out, "tokenizer": tok_path, "data": data_dir, **metrics}


def add_quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_quickstart(args: argparse.Namespace) -> None:
    quickstart(QuickstartConfig(out=args.out, vocab_size=args.vocab_size, steps=args.steps,
                                progress=not args.quiet))
