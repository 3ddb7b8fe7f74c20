"""The `lmstack` command: parses arguments and calls one function per subcommand.

    lmstack --help
    lmstack tokenizer train --vocab-size 8192 --out runs/tok.json      # on the stdlib corpus
    lmstack tokenizer inspect --tokenizer runs/tok.json --text "def f(): pass"
    lmstack data prepare --tokenizer runs/tok.json --out runs/data
    lmstack quickstart

Every subcommand is two functions in the package that does its work: `add_<name>_args(parser)`
declares its flags, `cmd_<name>(args)` runs it. Most live in the package's `commands.py`; a
command that is a module's whole purpose lives in that module (serve/terminal.py, train/heads.py,
infer/quantize.py, quickstart.py). COMMANDS below lists them all, with their help; a module's own
`python -m` entry point builds its parser from the same pair.

Errors raised on purpose (`lmstack.errors.LMStackError`) are printed as one line, without a
traceback, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from lmstack import quickstart
from lmstack.data import commands as data
from lmstack.errors import LMStackError
from lmstack.eval import commands as evaluation
from lmstack.infer import commands as infer
from lmstack.infer import sample_text
from lmstack.infer import quantize
from lmstack.interop import commands as interop
from lmstack.serve import commands as serve
from lmstack.serve import terminal
from lmstack.tokenizer import commands as tokenizer
from lmstack.train import commands as training
from lmstack.train import heads


@dataclass(frozen=True)
class Command:
    """A subcommand: its flags, what runs it, and its help."""

    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], object]
    help: str
    description: str


@dataclass(frozen=True)
class Group:
    """A subcommand with subcommands of its own (`lmstack tokenizer encode`)."""

    commands: dict[str, Command]
    help: str
    description: str


TOKENIZER = {
    "train": Command(data.add_tokenizer_train_args, data.cmd_tokenizer_train,
                     "train a tokenizer on a corpus",
                     "Train byte-level BPE on documents (files, directories, globs, JSONL, or the "
                     "built-in 'stdlib' corpus)."),
    "encode": Command(tokenizer.add_encode_args, tokenizer.cmd_encode, "text -> token ids",
                      "Encode text to ids. Text that spells a special token is an error unless "
                      "--allow-special."),
    "decode": Command(tokenizer.add_decode_args, tokenizer.cmd_decode, "token ids -> text",
                      "Decode ids (arguments or stdin, spaces or commas)."),
    "inspect": Command(tokenizer.add_inspect_args, tokenizer.cmd_inspect,
                       "show how text splits into tokens",
                       "With text: its pieces and tokens. Without: a summary of the tokenizer."),
    "export-hf": Command(tokenizer.add_export_hf_args, tokenizer.cmd_export_hf,
                         "write a Hugging Face tokenizer.json",
                         "Export to a tokenizer.json that `tokenizers` loads and that encodes to "
                         "the same ids."),
}

DATA = {
    "prepare": Command(data.add_prepare_args, data.cmd_prepare, "clean + dedup + tokenize into shards",
                       "Read sources, normalize, filter, scrub PII and secrets, deduplicate, and "
                       "write uint16/uint32 token shards with a report."),
    "synth": Command(data.add_synth_args, data.cmd_synth, "write synthetic arithmetic expressions",
                     "Random expression trees with their values, e.g. (3+(4*2))=11, one per line."),
}

COMMANDS: dict[str, Command | Group] = {
    "tokenizer": Group(TOKENIZER, "train, use and inspect byte-level BPE tokenizers",
                       "Byte-level BPE tokenizers: train, encode, decode, inspect, export to "
                       "Hugging Face."),
    "data": Group(DATA, "prepare training data",
                  "Clean, deduplicate and tokenize corpora into shards."),
    # Progress samples come from the inference layer, which train may not import: given here.
    "train": Command(training.add_train_args, partial(training.cmd_train, sample=sample_text),
                     "pretrain a model on token shards",
                     "Teacher-forcing training of any model (GPT, LSTM, GRU, n-gram) on shards from "
                     "`lmstack data prepare`. Config from TOML (see configs/), overridden by --set "
                     "key=value. Under torchrun it runs DDP (or FSDP with --set parallel=fsdp)."),
    "eval": Command(evaluation.add_eval_args, evaluation.cmd_eval,
                    "perplexity and bits per byte of a model on a text file",
                    "Score held-out text with a model directory; texts longer than the context "
                    "are scored with a sliding window."),
    "generate": Command(infer.add_generate_args, infer.cmd_generate,
                        "generate text from a model, streaming",
                        "Continue --prompt with a model directory. Greedy when --temperature 0; "
                        "beam search with --num-beams N; best-of-N with --best-of N. Every "
                        "generation setting is a flag."),
    "sample-compare": Command(infer.add_sample_compare_args, infer.cmd_sample_compare,
                              "one prompt under greedy/temperature/top-k/top-p/beam",
                              "Continue the same prompt with several decoding strategies (same "
                              "seed) and print them side by side."),
    "serve": Command(serve.add_serve_args, serve.cmd_serve,
                     "OpenAI-compatible HTTP server with a web chat page",
                     "Serve a model directory over the OpenAI API (/v1/completions, "
                     "/v1/chat/completions, streaming), with continuous batching, /metrics and a "
                     "web chat page at /."),
    "chat": Command(terminal.add_chat_args, terminal.cmd_chat,
                    "chat with a model in the terminal, streaming",
                    "A terminal chat: /reset, /set NAME VALUE, /show, /help, /quit."),
    "train-heads": Command(heads.add_train_heads_args, heads.cmd_train_heads,
                           "train Medusa heads on a frozen model (speculative decoding)",
                           "Train K Medusa heads on a frozen GPT's last hidden state; saved next "
                           "to the model as medusa_heads.safetensors + medusa_config.json."),
    "quantize": Command(quantize.add_quantize_args, quantize.cmd_quantize,
                        "weight-only int8/int4 quantization of a model directory",
                        "Write a copy of --model with every Linear layer in int8 (per channel) or "
                        "int4 (groups of --group-size)."),
    "convert": Command(interop.add_convert_args, interop.cmd_convert,
                       "convert between lmstack and Hugging Face model directories",
                       "Import a local Hugging Face checkpoint (GPT-2, Llama, Mistral, Qwen2) into "
                       "an lmstack model directory, or export an lmstack GPT to a directory "
                       "transformers loads."),
    "plot": Command(training.add_plot_args, training.cmd_plot,
                    "draw loss curves of training runs to a PNG",
                    "Read each run's log.jsonl and plot train/val loss."),
    "quickstart": Command(quickstart.add_quickstart_args, quickstart.cmd_quickstart,
                          "the main job on the built-in corpus",
                          "Train a tokenizer on the Python standard library, prepare token shards, "
                          "pretrain a small GPT, evaluate it and print samples. Reuses or resumes "
                          "what an earlier run left."),
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; every subcommand's --help stands on its own."""
    parser = argparse.ArgumentParser(
        prog="lmstack",
        description="The whole language-model stack on one CPU: tokenizer, data, training, "
                    "inference, serving.",
        epilog="Start with `lmstack quickstart`; every subcommand has --help.",
    )
    _add_commands(parser, COMMANDS, "command", "COMMAND")
    return parser


def _add_commands(parser: argparse.ArgumentParser, commands: dict[str, Command | Group],
                  dest: str, metavar: str) -> None:
    sub = parser.add_subparsers(dest=dest, metavar=metavar, required=True)
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help, description=command.description)
        if isinstance(command, Group):
            _add_commands(p, command.commands, "action", "ACTION")
        else:
            command.add_args(p)
            p.set_defaults(func=command.run)


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
