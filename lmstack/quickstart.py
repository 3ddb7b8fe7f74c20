"""The quickstart: the main job of `make run` — the whole story of an LLM on one CPU.

    lmstack quickstart [--out runs/quickstart] [--minutes 5]

On the built-in corpus by default (the Python standard library of this interpreter, ~31 MB):
1. train a byte-level BPE tokenizer on the cleaned corpus      -> OUT/tokenizer.json
2. clean, deduplicate and tokenize the corpus into shards      -> OUT/data/ (+ report.json)
3. pretrain a small GPT (lmstack/configs/quickstart.toml)      -> OUT/ is its model directory
4. report validation perplexity and bits per byte, draw the loss curve (OUT/loss.png), print
   samples at a few temperatures, and say what the numbers mean, measured against baselines
   computed from the same data (uniform guessing, token frequencies, zlib).

Every stage reuses what an earlier run left: a finished stage is skipped, an interrupted
training run resumes from its last checkpoint. `lmstack eval --model OUT` and
`lmstack generate --model OUT` take the result.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path

# The work (torch, the trainer, matplotlib) is imported inside the stages, so that
# `lmstack quickstart --help` stays cheap.

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
    tok = tokenizer_stage(cfg, tok_path)
    _stage(2, "data: clean, dedup, tokenize into shards")
    data_stage(cfg, tok_path, data_dir)
    _stage(3, "pretrain a small GPT")
    train_cfg = pretrain_stage(cfg, out, data_dir, tok_path)
    _stage(4, "evaluate and sample")
    metrics = evaluate_stage(out, data_dir, tok, train_cfg)
    return {"model": out, "tokenizer": tok_path, "data": data_dir, **metrics}


def tokenizer_stage(cfg: QuickstartConfig, tok_path: Path):
    """Train the tokenizer (or load the one an earlier run left) and show how it splits code."""
    from lmstack.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer
    from lmstack.tokenizer import Tokenizer
    from lmstack.tokenizer.inspect import describe, inspect_text

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
    return tok


def data_stage(cfg: QuickstartConfig, tok_path: Path, data_dir: Path) -> None:
    """Clean, deduplicate and tokenize the corpus into shards (unless done already)."""
    from lmstack.data.prepare import REPORT, PrepareConfig, format_report, prepare

    if (data_dir / REPORT).exists():
        report = json.loads((data_dir / REPORT).read_text())
        print(f"reusing {data_dir}: {report['tokens']} tokens, "
              f"{report['bytes_per_token']:.2f} bytes/token")
        return
    print(format_report(prepare(PrepareConfig(
        sources=list(cfg.sources), out_dir=str(data_dir), tokenizer=str(tok_path),
        progress=cfg.progress))))


def pretrain_stage(cfg: QuickstartConfig, out: Path, data_dir: Path, tok_path: Path):
    """Train the quickstart's GPT, resuming a run that was interrupted; returns its config."""
    from lmstack.infer import sample_text
    from lmstack.train import checkpoint as ckpt
    from lmstack.train import load_config, train

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
        return train_cfg
    if done:
        print(f"resuming from step {done}")
    result = train(train_cfg, sample=sample_text)
    print(f"trained {result.step} steps in {result.seconds:.0f} s, "
          f"{result.tokens_per_second:,.0f} tokens/s")
    return train_cfg


def evaluate_stage(out: Path, data_dir: Path, tok, train_cfg) -> dict:
    """Validation metrics, the loss curve, samples, and what they mean; returns the metrics."""
    import torch

    from lmstack.data.loader import TokenLoader
    from lmstack.infer import sample_text
    from lmstack.models.directory import load_model
    from lmstack.train.objective import evaluate
    from lmstack.train.plot import plot_runs

    model = load_model(out)
    val = TokenLoader(data_dir, "val", train_cfg.batch_size, train_cfg.block_size,
                      shuffle=False, tokenizer=tok)
    metrics = evaluate(model, val, tok, train_cfg.eval_batches, torch.device("cpu"), train_cfg)
    print(f"validation: loss {metrics['val_loss']:.3f} nats/token, perplexity "
          f"{metrics['val_ppl']:.1f}, {metrics['val_bpb']:.3f} bits per byte")
    print(f"loss curve: {plot_runs([out], out / 'loss.png')}")
    samples: dict[float, list[str]] = {t: [] for t in TEMPERATURES}
    for prompt in PROMPTS[:2]:
        for temperature in TEMPERATURES:
            text = sample_text(model, tok, prompt, 60, temperature)
            samples[temperature].append(text)
            print(f"\n--- prompt {prompt!r}, temperature {temperature} ---\n{prompt}{text}")
    print("\n" + reading(run_figures(out, data_dir, tok, model, train_cfg, metrics, samples)))
    return metrics


def run_figures(out: Path, data_dir: Path, tok, model, train_cfg, metrics: dict,
                samples: dict[float, list[str]]) -> dict:
    """The run's own numbers that `reading` explains, and baselines from the same data: the
    perplexity of knowing only token frequencies (add-one unigram counts of the train split,
    scored on the val split) and zlib's bits per byte on the val split's text."""
    import numpy as np

    from lmstack.data.shards import read_tokens
    from lmstack.models import num_params
    from lmstack.train import checkpoint as ckpt

    train_ids, val_ids = read_tokens(data_dir, "train"), read_tokens(data_dir, "val")
    counts = np.bincount(train_ids, minlength=tok.vocab_size) + 1.0  # unseen tokens: count 1
    log_p = np.log(counts / counts.sum())
    text = tok.decode(val_ids.tolist()).encode("utf-8")
    step = ckpt.load_train_state(out)["step"]
    tokens_per_step = train_cfg.batch_size * train_cfg.block_size * train_cfg.grad_accum
    encoded = {t: [tok.encode_ordinary(s) for s in texts] for t, texts in samples.items()}
    return {
        "params": num_params(model), "steps": step, "tokens": step * tokens_per_step,
        "seconds": training_seconds(ckpt.read_log(out)), "vocab": tok.vocab_size,
        "ppl": metrics["val_ppl"], "bpb": metrics["val_bpb"],
        "unigram_ppl": math.exp(-float(log_p[val_ids].mean())) if len(val_ids) else math.nan,
        "zlib_bpb": 8 * len(zlib.compress(text, 9)) / max(len(text), 1),
        "repeats": {t: repeated_fraction(sum(ids, []), per=[len(i) for i in ids])
                    for t, ids in encoded.items()},
        "out": str(out),
    }


def training_seconds(records: list[dict]) -> float:
    """Training time from a log's `elapsed_s` (each resumed segment restarts its clock at 0).

    >>> training_seconds([{"elapsed_s": 5.0}, {"elapsed_s": 9.0}, {"elapsed_s": 4.0}])
    13.0
    """
    total, last = 0.0, 0.0
    for r in records:
        if "elapsed_s" not in r:
            continue
        if r["elapsed_s"] < last:  # a new segment: the previous one ended at `last`
            total += last
        last = r["elapsed_s"]
    return total + last


def repeated_fraction(ids: list[int], n: int = 4, per: list[int] | None = None) -> float:
    """The share of n-token runs that already occurred earlier in the same sample: how much a
    text repeats itself. `per` splits `ids` into samples of those lengths (default: one).

    >>> repeated_fraction([1, 2, 3, 1, 2, 3, 1, 2], n=2)  # (1,2) (2,3) (3,1) then 4 repeats
    0.5714285714285714
    >>> repeated_fraction([1, 2, 3, 4, 5], n=2)
    0.0
    """
    repeated = total = start = 0
    for length in per or [len(ids)]:
        sample, seen = ids[start:start + length], set()
        start += length
        for i in range(len(sample) - n + 1):
            gram = tuple(sample[i:i + n])
            repeated += gram in seen
            total += 1
            seen.add(gram)
    return repeated / max(total, 1)


def reading(f: dict) -> str:
    """What the run's numbers mean, for a learner, in four short paragraphs.

    >>> f = {"params": 1_900_000, "steps": 600, "tokens": 1_228_800, "seconds": 290.0,
    ...      "vocab": 8192, "ppl": 108.3, "bpb": 1.778, "unigram_ppl": 812.0, "zlib_bpb": 2.61,
    ...      "repeats": {0.0: 0.62, 0.7: 0.2, 1.0: 0.05}, "out": "runs/quickstart"}
    >>> print(reading(f))  # doctest: +ELLIPSIS
    What these numbers say:
    - perplexity 108.3: on average the model is as unsure of the next token ...
    """
    greedy, hot = f["repeats"][min(f["repeats"])], f["repeats"][max(f["repeats"])]
    paragraphs = [
        "What these numbers say:",
        f"- perplexity {f['ppl']:.1f}: on average the model is as unsure of the next token as a "
        f"fair pick among {f['ppl']:.0f} tokens, against {f['vocab']:,} (its vocabulary) knowing "
        f"nothing and {f['unigram_ppl']:,.0f} knowing only how often each token occurs; that is "
        f"{f['params'] / 1e6:.1f}M parameters after {f['steps']:,} steps ({f['tokens'] / 1e6:.1f}M "
        f"tokens, {f['seconds'] / 60:.1f} min).",
        f"- {f['bpb']:.3f} bits per byte: used as a compressor, the model would store held-out "
        f"text in {f['bpb'] / 8:.0%} of its size; zlib -9 needs {f['zlib_bpb']:.2f} bits per "
        f"byte ({f['zlib_bpb'] / 8:.0%}) on the same text.",
        f"- greedy decoding (temperature {min(f['repeats']):g}) always takes the most likely "
        f"token, and text it wrote makes itself likely again: {greedy:.0%} of its 4-token runs repeat an "
        f"earlier one, {hot:.0%} at temperature {max(f['repeats']):g}. Temperature divides the "
        "logits before the softmax: below 1 sharper (safer, loopier), above 1 flatter (more "
        "varied, more mistakes).",
        f"- next: `lmstack sample-compare --model {f['out']} --prompt 'def '` (every decoding "
        f"strategy side by side), `lmstack chat --model {f['out']}`, or a longer run: "
        f"`lmstack quickstart --steps {2 * f['steps']} --out runs/longer`.",
    ]
    return "\n".join(textwrap.fill(p, 100, subsequent_indent="  ") for p in paragraphs)


def add_quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--source", nargs="+", default=["stdlib"],
                   help="corpus: files, dirs, globs, .jsonl files, or 'stdlib' (default)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_quickstart(args: argparse.Namespace) -> None:
    quickstart(QuickstartConfig(out=args.out, sources=tuple(args.source),
                                vocab_size=args.vocab_size, steps=args.steps,
                                progress=not args.quiet))
