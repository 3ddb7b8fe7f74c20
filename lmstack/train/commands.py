"""`lmstack train` and `lmstack plot`: pretraining runs and their loss curves, from the shell.

    lmstack train --config configs/quickstart.toml --set steps=500 [--resume]
    lmstack plot runs/a runs/b --out loss.png

Each command is `add_<name>_args(parser)` (its flags) and `cmd_<name>(args)` (its run); cli.py
registers them. The work is imported when a command runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file (top-level TrainConfig keys, [model], [optim], "
                                    "[schedule])")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides, e.g. steps=500 schedule.lr=3e-4 model.n_layer=6 (repeatable: "
                        "a later --set adds to, and overrides, an earlier one)")
    p.add_argument("--resume", action="store_true", help="continue from out_dir's checkpoint")


def cmd_train(args: argparse.Namespace, sample=None) -> None:
    """`sample(model, tokenizer) -> str` writes the progress samples (see `train`)."""
    from lmstack.train import load_config, train

    overrides = list(args.set) + (["resume=true"] if args.resume else [])
    result = train(load_config(args.config, overrides), sample=sample)
    val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
    print(f"trained {result.step} steps in {result.seconds:.1f} s "
          f"({result.tokens_per_second:,.0f} tokens/s); {val}; model in {result.out_dir}")


def add_plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (with log.jsonl)")
    p.add_argument("--out", default="loss.png", help="PNG file to write")
    p.add_argument("--metrics", nargs="+", default=["loss", "val_loss"],
                   help="what to draw, one panel per unit (also val_ppl, val_bpb, lr, tokens_per_s, "
                        "mfu; preference runs: accuracy, margin, chosen_reward, rejected_reward "
                        "and their val_ forms; RL runs: reward, val_reward, accuracy, "
                        "val_accuracy, kl, clip_fraction, completion_tokens)")


def cmd_plot(args: argparse.Namespace) -> None:
    from lmstack.train.plot import plot_runs  # matplotlib: only when plotting

    print(f"wrote {plot_runs(args.runs, args.out, args.metrics)}")


def add_train_heads_args(p: argparse.ArgumentParser) -> None:
    """Flags of `lmstack train-heads` (run by train/heads.py's cmd_train_heads)."""
    from lmstack.train.heads_config import HeadsTrainConfig

    d = HeadsTrainConfig()
    p.add_argument("--model", required=True, help="the frozen base model directory (a GPT)")
    p.add_argument("--data", nargs="+", required=True,
                   help="a token-shard directory (lmstack data prepare) or text files")
    p.add_argument("--out", default=None, help="where to write the heads (default: --model)")
    p.add_argument("--heads", type=int, default=d.heads, help="number of heads K")
    p.add_argument("--layers", type=int, default=d.layers, help="residual blocks per head")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--loss", choices=["distill", "data"], default=d.loss,
                   help="distill: match the base model's predictions (default); data: the text's tokens")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much time")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
