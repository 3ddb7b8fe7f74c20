"""`lmstack convert`: between lmstack and Hugging Face model directories.

    lmstack convert --src hf/gpt2 --dst runs/gpt2 --to lmstack
    lmstack convert --src runs/quickstart --dst runs/quickstart-hf --to hf

The command is `add_convert_args(parser)` (its flags) and `cmd_convert(args)` (its run); cli.py
registers them.
"""

from __future__ import annotations

import argparse

from lmstack.errors import ConfigError


def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, help="model directory to read")
    p.add_argument("--dst", required=True, help="directory to write")
    p.add_argument("--from", dest="from_", choices=["hf", "lmstack"], help="default: detected")
    p.add_argument("--to", required=True, choices=["hf", "lmstack"])


def cmd_convert(args: argparse.Namespace) -> None:
    from lmstack.interop import convert, is_hf_dir

    source = "hf" if is_hf_dir(args.src) else "lmstack"
    if args.from_ and args.from_ != source:
        raise ConfigError(f"--from {args.from_} but {args.src} is an "
                          f"{source} directory")
    if source == args.to:
        raise ConfigError(f"{args.src} is already an {source} directory; --to must differ")
    print(f"wrote {convert(args.src, args.dst, args.to)}")
