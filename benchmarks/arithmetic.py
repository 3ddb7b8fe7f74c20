"""Arithmetic: does a small GPT learn to evaluate expressions it never saw? Next to n-gram models.

    .venv/bin/python benchmarks/arithmetic.py [--n 40000] [--test 1000] [--depth 2]
                                              [--steps 1500] [--runs runs/arithmetic]

Data (lmstack.data.synthetic): random expression trees over the digits 0-9 with + - *, at
most `--depth` operator levels, printed with their value, e.g. `((3+4)*(2-7))=-35`. A pool of
examples is drawn, duplicates (by string) are dropped, and `--test` expressions are held out;
the rest is the training set, so no test expression occurs in training (checked by string).
Each example is one document of a byte-level shard directory (written by `write_shards`, 2% of
the training examples validate), tokens are bytes, `<|endoftext|>` separates examples.

Models, all trained on the same training tokens:
- a small GPT (4 layers, width 128, RoPE, ReLU MLP, Muon) trained by `lmstack.train.train`;
- count-based n-gram models (`NGramLM`, interpolated Kneser-Ney) of order 5 and 8, fit on
  the training split's token stream.

Score: exact match on the held-out expressions. The prompt is `<|endoftext|>expr=`; decoding
is greedy through the inference engine (`lmstack.infer.Engine`: all prompts in one ragged
batch, KV cache / recurrent state / n-gram history), until `<|endoftext|>` or a newline (at most
8 tokens); the answer must equal the true value exactly.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmstack.data.shards import ShardConfig, read_tokens, write_shards
from lmstack.data.sources import Document
from lmstack.infer import Engine
from lmstack.data.synthetic import ArithmeticConfig, generate, split_example
from lmstack.models import NGramConfig, NGramLM, num_params
from lmstack.models.directory import load_model
from lmstack.tokenizer import ENDOFTEXT, Tokenizer
from lmstack.tokenizer.patterns import resolve_pattern
from lmstack.train import load_config, train

THREADS = 2
MAX_ANSWER_TOKENS = 8

# The GPT and how it is trained (TrainConfig overrides; data and out_dir are added).
GPT_RECIPE: list[str] = [
    "model.model_type=gpt", "model.n_layer=4", "model.n_head=4", "model.n_embd=128",
    "model.block_size=64", "model.position=rope", "model.mlp=relu", "model.bias=false",
    "batch_size=32", "block_size=64",
    "optim.name=muon", "optim.momentum=0.9", "optim.weight_decay=0.1",
    "schedule.lr=1e-2", "schedule.min_lr=1e-3", "schedule.warmup_steps=30",
    "eval_every=250", "eval_batches=10", "save_every=100000", "log_every=50",
    "device=cpu", f"threads={THREADS}", "progress=false",
]


def byte_tokenizer() -> Tokenizer:
    """256 byte ids and <|endoftext|> = 256, no merges: one id per character here."""
    return Tokenizer(pattern=resolve_pattern("gpt4"), merges=[], special_tokens={ENDOFTEXT: 256})


def make_splits(n: int, n_test: int, depth: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Unique training examples and held-out test examples whose expressions are not in training."""
    pool = generate(ArithmeticConfig(n=n + n_test, max_depth=depth, ops=("+", "-", "*"),
                                     low=0, high=9, seed=seed))
    unique = list(dict.fromkeys(d.text for d in pool))  # an expression has one value: dedup by text
    random.Random(seed).shuffle(unique)
    test, train_set = unique[:n_test], unique[n_test:]
    seen = {split_example(t)[0] for t in train_set}
    assert not any(split_example(t)[0] in seen for t in test), "a test expression is in training"
    return train_set, test


def prepare(out: Path, train_texts: list[str], tok: Tokenizer) -> Path:
    """Shards of the training examples (2% of them validate) with tokenizer.json beside them."""
    data = out / "data"
    write_shards([Document(t, f"arith/{i}") for i, t in enumerate(train_texts)], tok, data,
                 ShardConfig(val_fraction=0.02, seed=0, workers=1, progress=False))
    tok.save(data / "tokenizer.json")
    return data


def exact_match(model, tok: Tokenizer, test: list[str]) -> tuple[float, dict[int, float]]:
    """Share of test examples answered exactly, overall and by expression depth."""
    prompts, truths = [], []
    for text in test:
        expr, value = split_example(text)
        prompts.append([tok.eot_id, *tok.encode_ordinary(f"{expr}=")])
        truths.append(str(value))
    # One batch of prompts of different lengths through the inference engine, greedy.
    done = Engine(model, tok).generate(prompts, temperature=0, max_new_tokens=MAX_ANSWER_TOKENS,
                                       stop=["\n"])
    answers = [c.text for c in done]
    right = np.array([a == t for a, t in zip(answers, truths)])
    depths = np.array([max_depth_of(split_example(t)[0]) for t in test])
    return float(right.mean()), {int(d): float(right[depths == d].mean()) for d in np.unique(depths)}


def max_depth_of(expr: str) -> int:
    """Operator levels of a printed expression: the deepest parenthesis nesting, not counting
    the parentheses around negative leaves (there are none: leaves are 0-9).

    >>> max_depth_of("((3+4)*2)"), max_depth_of("7")
    (2, 0)
    """
    depth = best = 0
    for ch in expr:
        depth += ch == "("
        depth -= ch == ")"
        best = max(best, depth)
    return best


def machine() -> str:
    """Cores, CPU model, torch version, threads and date, for the results table."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {cpu}, torch {torch.__version__}, {THREADS} threads, "
            f"{datetime.date.today().isoformat()}")


@dataclass
class Row:
    """One model's line of the results table."""

    model: str
    params: str
    train_s: float
    accuracy: float
    by_depth: dict[int, float]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40_000, help="examples drawn before dedup and hold-out")
    p.add_argument("--test", type=int, default=1000, help="held-out expressions")
    p.add_argument("--depth", type=int, default=2, help="max operator levels")
    p.add_argument("--steps", type=int, default=1500, help="GPT optimizer steps")
    p.add_argument("--runs", default="runs/arithmetic")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra trainer overrides for the GPT")
    a = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    out = Path(a.runs)
    train_texts, test = make_splits(a.n, a.test, a.depth)
    tok = byte_tokenizer()
    data = prepare(out, train_texts, tok)
    tokens = np.asarray(read_tokens(data, "train"), dtype=np.int64)
    print(f"{len(train_texts):,} training examples ({len(tokens):,} tokens, {len(train_texts[0])}"
          f" chars e.g. {train_texts[0]!r}), {len(test):,} held-out, depth <= {a.depth}")
    rows = []

    t0 = time.perf_counter()
    cfg = load_config(None, [f"data={data}", f"out_dir={out / 'gpt'}", *GPT_RECIPE,
                             f"steps={a.steps}", *a.set])
    result = train(cfg)
    train_s = time.perf_counter() - t0
    gpt = load_model(out / "gpt")
    epochs = result.step * cfg.batch_size * cfg.block_size / len(tokens)
    acc, by_depth = exact_match(gpt, tok, test)
    rows.append(Row(f"GPT {cfg.model['n_layer']}L/{cfg.model['n_embd']} ({result.step} steps, "
                    f"{epochs:.1f} epochs)", f"{num_params(gpt) / 1e6:.2f}M", train_s, acc, by_depth))
    print(rows[-1], flush=True)

    for order in (5, 8):
        t0 = time.perf_counter()
        ngram = NGramLM(NGramConfig(vocab_size=tok.vocab_size, order=order)).fit(tokens)
        fit_s = time.perf_counter() - t0
        acc, by_depth = exact_match(ngram, tok, test)
        grams = sum(len(t.keys) for t in ngram.orders)  # stored counts, orders 1..n
        rows.append(Row(f"{order}-gram (Kneser-Ney)", f"{grams:,} n-grams", fit_s, acc, by_depth))
        print(rows[-1], flush=True)

    depths = sorted({d for r in rows for d in r.by_depth})
    head = ["model", "params", "train s", "exact match", *[f"depth {d}" for d in depths]]
    body = [[r.model, r.params, f"{r.train_s:.1f}", f"{r.accuracy:.1%}",
             *[f"{r.by_depth.get(d, float('nan')):.1%}" for d in depths]] for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    print()
    for line in [head, ["-" * w for w in widths], *body]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
    counts = {d: sum(max_depth_of(split_example(t)[0]) == d for t in test) for d in depths}
    print(f"\nheld-out expressions by depth: {counts}")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
