"""`lmstack query FILE.lmql`: run a query file (query.py) on a model and print each run's
text and holes.

    lmstack query examples/programs/classify.lmql --model smollm2 --arg review="Great phone"
    lmstack query q.lmql --url http://127.0.0.1:8000/v1 --server-model smollm2   # any server

The model is --model, else the query's `from "..."`; --url runs it on an OpenAI-compatible
server instead (only what that API offers: remote.py). Flags import nothing heavy (--help).
"""

from __future__ import annotations

import argparse
import json
import sys

from lmstack import MODEL_HELP
from lmstack.errors import ConfigError


def add_query_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the query file (.lmql)")
    p.add_argument("--model", default=None, help=MODEL_HELP + " (default: the query's `from`)")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a value the query's {expressions} can read (repeat for more)")
    p.add_argument("--url", default=None,
                   help="run on an OpenAI-compatible server at this base URL instead")
    p.add_argument("--server-model", default=None,
                   help="with --url: the model name to ask the server for")
    p.add_argument("--json", action="store_true", help="print each run as one JSON line")


def query_args(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE pairs as a dict.

    >>> query_args(["q=What is 2+2?", "n=3"])
    {'q': 'What is 2+2?', 'n': '3'}
    """
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.isidentifier():
            raise ConfigError(f"--arg {pair!r} is not NAME=VALUE; write e.g. --arg question=hi")
        out[name] = value
    return out


def cmd_query(args: argparse.Namespace) -> None:
    """Parse the file, pick the backend, run every sample, print them."""
    from lmstack.infer.program.query import parse_query
    from lmstack.infer.program.runner import run_all

    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read query file {args.file}: {e.strerror}") from None
    query = parse_query(text, args.file)
    states = run_all(query, _backend(args, query), decoder=query.decoder, **query_args(args.arg))
    for i, s in enumerate(states):
        holes = {k: getattr(v, "model_dump", lambda v=v: v)() for k, v in s.values.items()}
        if args.json:
            print(json.dumps({"text": s.text, "holes": holes, "tokens": s.stats.computed}))
            continue
        if len(states) > 1:
            print(f"--- run {i}")
        print(s.text)
        print(json.dumps(holes, ensure_ascii=False), file=sys.stderr)
    print(f"[{states[-1].stats.computed} tokens computed in the last run]", file=sys.stderr)


def _backend(args: argparse.Namespace, query):
    if args.url:
        from lmstack.infer.program.remote import CompletionBackend

        return CompletionBackend.http(args.url, args.server_model or args.model or query.model)
    from lmstack.infer.engine import Engine
    from lmstack.models.installed import resolve_model

    model = args.model or query.model
    if model is None:
        raise ConfigError(f"{args.file} names no model (`from \"...\"`); pass --model")
    return Engine.load(str(resolve_model(model)))
