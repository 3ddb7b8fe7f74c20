"""The `lmstack` command: parses arguments and calls one function per subcommand.

    lmstack --help
    lmstack tokenizer train --vocab-size 8192 --out runs/tok.json      # on the stdlib corpus
    lmstack tokenizer inspect --tokenizer runs/tok.json --text "def f(): pass"
    lmstack data prepare --tokenizer runs/tok.json --out runs/data
    lmstack quickstart

Errors raised on purpose (`lmstack.errors.LMStackError`) are printed as one line, without a
traceback, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from lmstack.errors import ConfigError, LMStackError

Handler = Callable[[argparse.Namespace], None]


def _stdin_is_piped() -> bool:
    try:
        return not sys.stdin.isatty()
    except (OSError, ValueError, AttributeError):  # no usable stdin (closed, or captured)
        return False


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    if args.file is not None:
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --file {args.file}: {e}") from None
    if not _stdin_is_piped():
        raise ConfigError("no input: pass --text TEXT, --file PATH, or pipe text on stdin")
    return sys.stdin.read()


def _tokenizer(args: argparse.Namespace):
    from lmstack.tokenizer import Tokenizer

    return Tokenizer.load(args.tokenizer)


# ---- tokenizer ------------------------------------------------------------------------
def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from lmstack.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    cfg = TokenizerTrainConfig(sources=args.source, vocab_size=args.vocab_size,
                               pattern=args.pattern, special_tokens=args.special,
                               out=args.out, hf_out=args.hf_out, clean=not args.raw,
                               progress=not args.quiet)
    print(train_tokenizer(cfg).summary())


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    tok = _tokenizer(args)
    allowed = "all" if args.allow_special else ()
    ids = tok.encode(_read_text(args), allowed_special=allowed, engine=args.engine)
    print(json.dumps(ids) if args.json else " ".join(map(str, ids)))


def cmd_tokenizer_decode(args: argparse.Namespace) -> None:
    tok = _tokenizer(args)
    raw = " ".join(args.ids) if args.ids else sys.stdin.read()
    try:
        ids = [int(x) for x in raw.replace(",", " ").replace("[", " ").replace("]", " ").split()]
    except ValueError:
        raise ConfigError("ids must be integers, e.g. `lmstack tokenizer decode 15 27 9`") from None
    sys.stdout.write(tok.decode(ids, errors=args.errors) + ("" if args.no_newline else "\n"))


def cmd_tokenizer_inspect(args: argparse.Namespace) -> None:
    from lmstack.tokenizer.inspect import describe, inspect_text

    tok = _tokenizer(args)
    has_input = args.text is not None or args.file is not None or _stdin_is_piped()
    print(inspect_text(tok, _read_text(args)) if has_input else describe(tok))


def cmd_tokenizer_export_hf(args: argparse.Namespace) -> None:
    from lmstack.tokenizer import save_hf

    print(f"wrote {save_hf(_tokenizer(args), args.out)}")


# ---- data -----------------------------------------------------------------------------
def cmd_data_prepare(args: argparse.Namespace) -> None:
    from lmstack.data.dedup import DedupConfig
    from lmstack.data.prepare import PrepareConfig, format_report, prepare

    cfg = PrepareConfig(sources=args.source, out_dir=args.out, tokenizer=args.tokenizer,
                        glob=args.glob, text_field=args.text_field,
                        val_fraction=args.val_fraction, workers=args.workers, seed=args.seed,
                        normalization=args.normalize, pii=not args.no_pii,
                        dedup=DedupConfig(exact=not args.no_dedup, near=not args.no_dedup),
                        progress=not args.quiet)
    print(format_report(prepare(cfg)))


def cmd_data_synth(args: argparse.Namespace) -> None:
    from lmstack.data.synthetic import ArithmeticConfig, write_examples

    cfg = ArithmeticConfig(n=args.n, max_depth=args.depth, seed=args.seed)
    print(f"wrote {args.n} expressions to {write_examples(args.out, cfg)}")


# ---- training and evaluation ----------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> None:
    from lmstack.train import load_config, train

    overrides = list(args.set) + (["resume=true"] if args.resume else [])
    result = train(load_config(args.config, overrides))
    val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
    print(f"trained {result.step} steps in {result.seconds:.1f} s "
          f"({result.tokens_per_second:,.0f} tokens/s); {val}; model in {result.out_dir}")


def cmd_eval(args: argparse.Namespace) -> None:
    from lmstack.eval.perplexity import evaluate_model_dir

    r = evaluate_model_dir(args.model, args.data, args.block_size, args.stride, args.batch_size)
    print(f"{r['tokens']:,} tokens, {r['bytes']:,} bytes: loss {r['loss']:.4f} nats/token, "
          f"perplexity {r['ppl']:.2f}, {r['bpb']:.4f} bits/byte")


def cmd_plot(args: argparse.Namespace) -> None:
    from lmstack.train.plot import plot_runs

    print(f"wrote {plot_runs(args.runs, args.out)}")


def cmd_quickstart(args: argparse.Namespace) -> None:
    from lmstack.quickstart import QuickstartConfig, quickstart

    quickstart(QuickstartConfig(out=args.out, vocab_size=args.vocab_size, steps=args.steps,
                                progress=not args.quiet))


def cmd_convert(args: argparse.Namespace) -> None:
    from lmstack.interop import convert, is_hf_dir

    source = "hf" if is_hf_dir(args.src) else "lmstack"
    if args.from_ and args.from_ != source:
        raise ConfigError(f"--from {args.from_} but {args.src} is an "
                          f"{source} directory")
    if source == args.to:
        raise ConfigError(f"{args.src} is already an {source} directory; --to must differ")
    print(f"wrote {convert(args.src, args.dst, args.to)}")


def cmd_generate(args: argparse.Namespace) -> None:
    from lmstack.infer.commands import run_generate

    run_generate(args)


def cmd_sample_compare(args: argparse.Namespace) -> None:
    from lmstack.infer.commands import run_sample_compare

    run_sample_compare(args)


def cmd_train_heads(args: argparse.Namespace) -> None:
    from lmstack.train.heads import cmd_train_heads as run

    run(args)


def cmd_serve(args: argparse.Namespace) -> None:
    from lmstack.serve.commands import cmd_serve as serve

    serve(args)


def cmd_chat(args: argparse.Namespace) -> None:
    from lmstack.serve.terminal import cmd_chat as chat

    chat(args)


# ---- parser ---------------------------------------------------------------------------
def _add_text_input(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, help="tokenizer file (ours or HF tokenizer.json)")
    p.add_argument("--text", help="the text (default: --file, else stdin)")
    p.add_argument("--file", help="read the text from this file")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; every subcommand's --help stands on its own."""
    parser = argparse.ArgumentParser(
        prog="lmstack",
        description="The whole language-model stack on one CPU: tokenizer, data, training, "
                    "inference, serving.",
        epilog="Start with `lmstack quickstart`; every subcommand has --help.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tok = sub.add_parser("tokenizer", help="train, use and inspect byte-level BPE tokenizers",
                         description="Byte-level BPE tokenizers: train, encode, decode, "
                                     "inspect, export to Hugging Face.")
    tsub = tok.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = tsub.add_parser("train", help="train a tokenizer on a corpus",
                        description="Train byte-level BPE on documents (files, directories, "
                                    "globs, JSONL, or the built-in 'stdlib' corpus).")
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
    p.set_defaults(func=cmd_tokenizer_train)

    p = tsub.add_parser("encode", help="text -> token ids",
                        description="Encode text to ids. Text that spells a special token is "
                                    "an error unless --allow-special.")
    _add_text_input(p)
    p.add_argument("--allow-special", action="store_true",
                   help="encode special-token strings as special tokens")
    p.add_argument("--engine", choices=["fast", "reference"], default="fast",
                   help="fast (tiktoken) or the pure-Python reference; same ids")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_tokenizer_encode)

    p = tsub.add_parser("decode", help="token ids -> text",
                        description="Decode ids (arguments or stdin, spaces or commas).")
    p.add_argument("--tokenizer", required=True, help="tokenizer file")
    p.add_argument("ids", nargs="*", help="token ids (default: read from stdin)")
    p.add_argument("--errors", choices=["replace", "strict"], default="replace",
                   help="what to do with bytes that are not UTF-8")
    p.add_argument("--no-newline", action="store_true", help="no trailing newline")
    p.set_defaults(func=cmd_tokenizer_decode)

    p = tsub.add_parser("inspect", help="show how text splits into tokens",
                        description="With text: its pieces and tokens. Without: a summary of "
                                    "the tokenizer.")
    _add_text_input(p)
    p.set_defaults(func=cmd_tokenizer_inspect)

    p = tsub.add_parser("export-hf", help="write a Hugging Face tokenizer.json",
                        description="Export to a tokenizer.json that `tokenizers` loads and "
                                    "that encodes to the same ids.")
    p.add_argument("--tokenizer", required=True, help="our tokenizer file")
    p.add_argument("--out", required=True, help="output file or directory")
    p.set_defaults(func=cmd_tokenizer_export_hf)

    data = sub.add_parser("data", help="prepare training data",
                          description="Clean, deduplicate and tokenize corpora into shards.")
    dsub = data.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = dsub.add_parser("prepare", help="clean + dedup + tokenize into shards",
                        description="Read sources, normalize, filter, scrub PII and secrets, "
                                    "deduplicate, and write uint16/uint32 token shards with a "
                                    "report.")
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
    p.set_defaults(func=cmd_data_prepare)

    p = dsub.add_parser("synth", help="write synthetic arithmetic expressions",
                        description="Random expression trees with their values, e.g. "
                                    "(3+(4*2))=11, one per line.")
    p.add_argument("--out", required=True, help="output text file")
    p.add_argument("--n", type=int, default=10_000, help="number of expressions")
    p.add_argument("--depth", type=int, default=3, help="maximum tree depth")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_synth)

    p = sub.add_parser("train", help="pretrain a model on token shards",
                       description="Teacher-forcing training of any model (GPT, LSTM, GRU, "
                                   "n-gram) on shards from `lmstack data prepare`. Config from "
                                   "TOML (see configs/), overridden by --set key=value. Under "
                                   "torchrun it runs DDP (or FSDP with --set parallel=fsdp).")
    p.add_argument("--config", help="TOML file (top-level TrainConfig keys, [model], [optim], "
                                    "[schedule])")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides, e.g. steps=500 schedule.lr=3e-4 model.n_layer=6")
    p.add_argument("--resume", action="store_true", help="continue from out_dir's checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="perplexity and bits per byte of a model on a text file",
                       description="Score held-out text with a model directory; texts longer "
                                   "than the context are scored with a sliding window.")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data", required=True, help="UTF-8 text file")
    p.add_argument("--block-size", type=int, default=None, help="window (default: context)")
    p.add_argument("--stride", type=int, default=None, help="window step (default: half)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_eval)

    from lmstack.infer.commands import add_generation_flags

    p = sub.add_parser("generate", help="generate text from a model, streaming",
                       description="Continue --prompt with a model directory. Greedy when "
                                   "--temperature 0; beam search with --num-beams N; best-of-N "
                                   "with --best-of N. Every generation setting is a flag.")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="run the model in this precision (default: as stored)")
    p.add_argument("--prompt", help="the prompt (\\n for newlines; default: stdin)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    add_generation_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("sample-compare", help="one prompt under greedy/temperature/top-k/top-p/beam",
                       description="Continue the same prompt with several decoding strategies "
                                   "(same seed) and print them side by side.")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="run the model in this precision (default: as stored)")
    p.add_argument("--prompt", help="the prompt (default: stdin)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample_compare)

    from lmstack.serve.commands import add_serve_args

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a web chat page",
                       description="Serve a model directory over the OpenAI API (/v1/completions, "
                                   "/v1/chat/completions, streaming), with continuous batching, "
                                   "/metrics and a web chat page at /.")
    add_serve_args(p)
    p.set_defaults(func=cmd_serve)

    from lmstack.serve.terminal import add_chat_args

    p = sub.add_parser("chat", help="chat with a model in the terminal, streaming",
                       description="A terminal chat: /reset, /set NAME VALUE, /show, /help, /quit.")
    add_chat_args(p)
    p.set_defaults(func=cmd_chat)

    from lmstack.train.heads import add_train_heads_args

    p = sub.add_parser("train-heads", help="train Medusa heads on a frozen model (speculative decoding)",
                       description="Train K Medusa heads on a frozen GPT's last hidden state; saved "
                                   "next to the model as medusa_heads.safetensors + medusa_config.json.")
    add_train_heads_args(p)
    p.set_defaults(func=cmd_train_heads)

    from lmstack.infer.quantize import add_quantize_args, cmd_quantize

    p = sub.add_parser("quantize", help="weight-only int8/int4 quantization of a model directory",
                       description="Write a copy of --model with every Linear layer in int8 "
                                   "(per channel) or int4 (groups of --group-size).")
    add_quantize_args(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("convert", help="convert between lmstack and Hugging Face model directories",
                       description="Import a local Hugging Face checkpoint (GPT-2, Llama, Mistral, "
                                   "Qwen2) into an lmstack model directory, or export an lmstack "
                                   "GPT to a directory transformers loads.")
    p.add_argument("--src", required=True, help="model directory to read")
    p.add_argument("--dst", required=True, help="directory to write")
    p.add_argument("--from", dest="from_", choices=["hf", "lmstack"], help="default: detected")
    p.add_argument("--to", required=True, choices=["hf", "lmstack"])
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("plot", help="draw loss curves of training runs to a PNG",
                       description="Read each run's log.jsonl and plot train/val loss.")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="loss.png", help="PNG file to write")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("quickstart", help="the main job on the built-in corpus",
                       description="Train a tokenizer on the Python standard library, prepare "
                                   "token shards, pretrain a small GPT, evaluate it and print "
                                   "samples. Reuses or resumes what an earlier run left.")
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmstack` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LMStackError as e:
        print(f"lmstack: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmstack: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmstack ... | head` closed the pipe: not an error
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
