"""`lmstack eval`: perplexity and bits per byte of a model (directory, GGUF file, short name) on a
text file.

    lmstack eval --model runs/quickstart --data held_out.txt [--stride 64]

The command is `add_eval_args(parser)` (its flags) and `cmd_eval(args)` (its run); cli.py
registers them.
"""

from __future__ import annotations

import argparse

from lmstack import MODEL_HELP


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--data", required=True, help="UTF-8 text file")
    p.add_argument("--block-size", type=int, default=None,
                   help="window (default: the context, at most 2048)")
    p.add_argument("--stride", type=int, default=None, help="window step (default: half)")
    p.add_argument("--batch-size", type=int, default=8)


def cmd_eval(args: argparse.Namespace, adapt=None) -> None:
    """Print the model's scores on --data; `adapt` changes the model as loaded (--lora DIR: its
    adapter put on, handed down by cli.py)."""
    from lmstack.eval.perplexity import evaluate_model_dir

    r = evaluate_model_dir(args.model, args.data, args.block_size, args.stride, args.batch_size,
                           adapt=adapt)
    print(f"{r['tokens']:,} tokens, {r['bytes']:,} bytes: loss {r['loss']:.4f} nats/token, "
          f"perplexity {r['ppl']:.2f}, {r['bpb']:.4f} bits/byte")
