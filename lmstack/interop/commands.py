"""`lmstack convert`: between lmstack model directories, Hugging Face directories and GGUF files.

    lmstack convert --src hf/gpt2 --dst runs/gpt2                 # HF -> lmstack
    lmstack convert --src runs/quickstart --dst runs/quickstart-hf --to hf
    lmstack convert --src SmolLM2-135M-Instruct.Q4_1.gguf --dst runs/smol-q4     # int4 kept
    lmstack convert --src SmolLM2-135M-Instruct.Q4_1.gguf --dst runs/smol --dequantize
    lmstack convert --src runs/quickstart --dst runs/quickstart.q8_0.gguf --to gguf --type q8_0

The command is `add_convert_args(parser)` (its flags; imports nothing heavy, for --help) and
`cmd_convert(args)` (its run); cli.py registers them. Each supported (source, target) pair is
one function in ROUTES: a new format adds its detection to `source_of` and its routes there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from lmstack.errors import ConfigError

SOURCES = ("gguf", "hf", "lmstack")
TARGETS = ("gguf", "hf", "lmstack")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")
DEFAULT_TARGET = {"gguf": "lmstack", "hf": "lmstack"}  # from lmstack, --to must be said
GGUF_FLAGS = ("dequantize", "dtype")  # flags that only a GGUF source reads


def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True,
                   help="model to read: an lmstack or Hugging Face directory, or a .gguf file")
    p.add_argument("--dst", required=True, help="directory to write (a .gguf file with --to gguf)")
    p.add_argument("--from", dest="from_", choices=SOURCES, help="default: detected from --src")
    p.add_argument("--to", choices=TARGETS,
                   help="default: lmstack from a Hugging Face directory or a GGUF file; "
                        "required from an lmstack directory")
    p.add_argument("--dequantize", action="store_true",
                   help="GGUF: store Q4_1 matrices as floats too (default: they stay int4, "
                        "exactly; other types are always dequantized)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="GGUF: the float type of dequantized weights (default: fp32)")
    p.add_argument("--type", dest="gguf_type", choices=GGUF_TYPES, default=None,
                   help="--to gguf: the type of the weight matrices (default: f16)")


def source_of(src: str) -> str:
    """Which kind of model --src is: 'gguf', 'hf' or 'lmstack'."""
    from lmstack.interop.gguf_file import is_gguf
    from lmstack.interop.hf import is_hf_dir

    if is_gguf(src):
        return "gguf"
    return "hf" if Path(src).is_dir() and is_hf_dir(src) else "lmstack"


def _hf_to_lmstack(args: argparse.Namespace) -> Path:
    from lmstack.interop.hf import convert

    return convert(args.src, args.dst, "lmstack")


def _lmstack_to_hf(args: argparse.Namespace) -> Path:
    from lmstack.interop.hf import convert

    return convert(args.src, args.dst, "hf")


def _gguf_to_lmstack(args: argparse.Namespace) -> Path:
    from lmstack.infer.quantize import DTYPES
    from lmstack.interop.gguf_model import convert_gguf

    return convert_gguf(args.src, args.dst, keep_quantized=not args.dequantize,
                        dtype=DTYPES[args.dtype or "fp32"])


def _to_gguf(args: argparse.Namespace) -> Path:
    from lmstack.interop.gguf_export import export_gguf

    return export_gguf(args.src, args.dst, args.gguf_type or "f16")


ROUTES: dict[tuple[str, str], Callable[[argparse.Namespace], Path]] = {
    ("hf", "lmstack"): _hf_to_lmstack,
    ("lmstack", "hf"): _lmstack_to_hf,
    ("gguf", "lmstack"): _gguf_to_lmstack,
    ("lmstack", "gguf"): _to_gguf,
    ("hf", "gguf"): _to_gguf,
    ("gguf", "gguf"): _to_gguf,  # re-export in another type
}


def cmd_convert(args: argparse.Namespace) -> None:
    """Detect the source, check the pair and the flags, run its route."""
    from lmstack.models.installed import resolve_model

    args.src = str(resolve_model(args.src))  # a short name (`smollm2`) -> its file
    source = source_of(args.src)
    if args.from_ and args.from_ != source:
        raise ConfigError(f"--from {args.from_} but {args.src} is {_a(source)} model")
    if Path(args.src).resolve() == Path(args.dst).resolve():
        raise ConfigError("--src and --dst are the same directory or file; write the conversion "
                          "elsewhere")
    target = args.to or DEFAULT_TARGET.get(source)
    if target is None:
        raise ConfigError(f"{args.src} is an lmstack model directory; say what to convert it to "
                          f"with --to ({', '.join(t for s, t in ROUTES if s == source)})")
    if source == target and (source, target) not in ROUTES:
        raise ConfigError(f"{args.src} is already {_a(source)} model; --to must differ")
    if (source, target) not in ROUTES:
        raise ConfigError(f"converting {_a(source)} model to {target} is not supported; from "
                          f"{source}: {', '.join(t for s, t in ROUTES if s == source)}")
    given = [f"--{f}" for f in GGUF_FLAGS if getattr(args, f, None)]
    if given and source != "gguf":
        raise ConfigError(f"{' and '.join(given)} apply to a GGUF --src; {args.src} is "
                          f"{_a(source)} model")
    if args.gguf_type and target != "gguf":
        raise ConfigError(f"--type {args.gguf_type} applies to --to gguf; this writes {target}")
    print(f"wrote {ROUTES[source, target](args)}")


def _a(source: str) -> str:
    """'an lmstack', 'an hf', 'a gguf' — the article the message needs."""
    return {"gguf": "a GGUF", "hf": "a Hugging Face", "lmstack": "an lmstack"}[source]
