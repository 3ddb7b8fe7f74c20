"""`lmstack tokenizer encode | decode | inspect | export-hf`: a tokenizer file, used from the shell.

    lmstack tokenizer encode --tokenizer runs/tok.json --text "def f(): pass" --json
    echo 15 27 9 | lmstack tokenizer decode --tokenizer runs/tok.json
    lmstack tokenizer inspect --tokenizer runs/tok.json --text "naïve 你好"
    lmstack tokenizer export-hf --tokenizer runs/tok.json --out runs/hf

Each command is `add_<name>_args(parser)` (its flags) and `cmd_<name>(args)` (its run); cli.py
registers them. Text comes from --text, else --file, else stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmstack.errors import ConfigError, SpecialTokenError
from lmstack.tokenizer import Tokenizer, save_hf
from lmstack.tokenizer.inspect import describe, inspect_text


def stdin_is_piped() -> bool:
    try:
        return not sys.stdin.isatty()
    except (OSError, ValueError, AttributeError):  # no usable stdin (closed, or captured)
        return False


def read_text(args: argparse.Namespace) -> str:
    """The text of --text, --file or stdin, in that order."""
    if args.text is not None:
        return args.text
    if args.file is not None:
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --file {args.file}: {e}") from None
    if not stdin_is_piped():
        raise ConfigError("no input: pass --text TEXT, --file PATH, or pipe text on stdin")
    return sys.stdin.read()


def _add_text_input(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, help="tokenizer file (ours or HF tokenizer.json)")
    p.add_argument("--text", help="the text (default: --file, else stdin)")
    p.add_argument("--file", help="read the text from this file")


def add_encode_args(p: argparse.ArgumentParser) -> None:
    _add_text_input(p)
    p.add_argument("--allow-special", action="store_true",
                   help="encode special-token strings as special tokens")
    p.add_argument("--engine", choices=["fast", "reference"], default="fast",
                   help="fast (tiktoken) or the pure-Python reference; same ids")
    p.add_argument("--json", action="store_true", help="print a JSON list")


def cmd_encode(args: argparse.Namespace) -> None:
    tok = Tokenizer.load(args.tokenizer)
    allowed = "all" if args.allow_special else ()
    try:
        ids = tok.encode(read_text(args), allowed_special=allowed, engine=args.engine)
    except SpecialTokenError as e:  # its message names Python arguments; say it with our flag
        if not hasattr(e, "token"):
            raise
        raise SpecialTokenError(
            f"the text contains the special token {e.token!r} at offset {e.offset}; pass "
            f"--allow-special to encode it as that token (id {tok.special_tokens[e.token]})"
        ) from None
    print(json.dumps(ids) if args.json else " ".join(map(str, ids)))


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, help="tokenizer file")
    p.add_argument("ids", nargs="*", help="token ids (default: read from stdin)")
    p.add_argument("--errors", choices=["replace", "strict"], default="replace",
                   help="what to do with bytes that are not UTF-8")
    p.add_argument("--no-newline", action="store_true", help="no trailing newline")


def cmd_decode(args: argparse.Namespace) -> None:
    tok = Tokenizer.load(args.tokenizer)
    raw = " ".join(args.ids) if args.ids else sys.stdin.read()
    try:
        ids = [int(x) for x in raw.replace(",", " ").replace("[", " ").replace("]", " ").split()]
    except ValueError:
        raise ConfigError("ids must be integers, e.g. `lmstack tokenizer decode 15 27 9`") from None
    sys.stdout.write(tok.decode(ids, errors=args.errors) + ("" if args.no_newline else "\n"))


def add_inspect_args(p: argparse.ArgumentParser) -> None:
    _add_text_input(p)


def cmd_inspect(args: argparse.Namespace) -> None:
    tok = Tokenizer.load(args.tokenizer)
    has_input = args.text is not None or args.file is not None or stdin_is_piped()
    print(inspect_text(tok, read_text(args)) if has_input else describe(tok))


def add_export_hf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, help="our tokenizer file")
    p.add_argument("--out", required=True, help="output file or directory")


def cmd_export_hf(args: argparse.Namespace) -> None:
    print(f"wrote {save_hf(Tokenizer.load(args.tokenizer), args.out)}")
