"""`lmstack tokenizer train`, `lmstack data prepare`, `lmstack data synth`: corpora from the shell.

    lmstack tokenizer train --source stdlib --vocab-size 8192 --out runs/tok.json
    lmstack data prepare --tokenizer runs/tok.json --out runs/data
    lmstack data synth --out runs/arith.txt --n 10000

Each command is `add_<name>_args(parser)` (its flags) and `cmd_<name>(args)` (its run); cli.py
registers them. The work is imported when a command runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmstack.errors import ConfigError


def add_tokenizer_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", nargs="+", default=["stdlib"],
                   help="files, dirs, globs, .jsonl files, or 'stdlib' (default)")
    p.add_argument("--vocab-size", type=int, default=8192, help="ids incl. bytes and specials")
    p.add_argument("--pattern", default="gpt4", help="split pattern: gpt4, gpt2 or a regex")
    p.add_argument("--special", nargs="*", default=None,
                   help="special tokens (default: <|endoftext|> <|im_start|> <|im_end|>)")
    p.add_argument("--out", required=True, help="where to write the tokenizer JSON")
    p.add_argument("--hf-out", help="also write a Hugging Face tokenizer.json here")
    p.add_argument("--raw", action="store_true", help="train on raw text, skip cleaning")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from lmstack.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    cfg = TokenizerTrainConfig(sources=args.source, vocab_size=args.vocab_size,
                               pattern=args.pattern, special_tokens=args.special,
                               out=args.out, hf_out=args.hf_out, clean=not args.raw,
                               progress=not args.quiet)
    result = train_tokenizer(cfg)
    for warning in result.warnings:  # e.g. a corpus too small for --vocab-size
        print(f"lmstack: warning: {warning}", file=sys.stderr)
    print(result.summary())


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", nargs="+", default=["stdlib"],
                   help="files, dirs, globs, .jsonl files, or 'stdlib' (default)")
    p.add_argument("--tokenizer", required=True, help="tokenizer file")
    p.add_argument("--out", required=True, help="output directory for shards and report")
    p.add_argument("--glob", default="*", help="which files of a directory source to read")
    p.add_argument("--text-field", default="text", help="JSON field with the text (.jsonl)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="documents held out")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--workers", type=int, default=None, help="encoding processes")
    p.add_argument("--normalize", choices=["NFC", "NFKC", "none"], default="NFC")
    p.add_argument("--no-dedup", action="store_true", help="keep duplicates")
    p.add_argument("--no-pii", action="store_true", help="do not scrub PII and secrets")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_prepare(args: argparse.Namespace) -> None:
    from lmstack.data.dedup import DedupConfig
    from lmstack.data.prepare import PrepareConfig, format_report, prepare

    cfg = PrepareConfig(sources=args.source, out_dir=args.out, tokenizer=args.tokenizer,
                        glob=args.glob, text_field=args.text_field,
                        val_fraction=args.val_fraction, workers=args.workers, seed=args.seed,
                        normalization=args.normalize, pii=not args.no_pii,
                        dedup=DedupConfig(exact=not args.no_dedup, near=not args.no_dedup),
                        progress=not args.quiet)
    print(format_report(prepare(cfg)))


def add_synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output text file")
    p.add_argument("--n", type=int, default=10_000, help="number of expressions")
    p.add_argument("--depth", type=int, default=3, help="maximum tree depth")
    p.add_argument("--seed", type=int, default=0)


def cmd_synth(args: argparse.Namespace) -> None:
    from lmstack.data.synthetic import ArithmeticConfig, write_examples

    cfg = ArithmeticConfig(n=args.n, max_depth=args.depth, seed=args.seed)
    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a directory; give a file name, e.g. "
                          f"{Path(args.out) / 'arith.txt'}")
    print(f"wrote {args.n} expressions to {write_examples(args.out, cfg)}")
