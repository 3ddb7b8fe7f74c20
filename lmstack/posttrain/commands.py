"""`lmstack sft`: fine-tune an existing model on chat JSONL, from the shell.

    lmstack sft --model smollm2 --data chats.jsonl --out runs/sft --set peft.method=lora
    lmstack sft --config sft.toml --set steps=500 --resume

Flags here (cheap to import: `lmstack sft --help` loads no torch); the run is sft_run.py's.
"""

from __future__ import annotations

import argparse


def add_sft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="base_model", default=None,
                   help="what to fine-tune: a model directory, HF directory, GGUF file or installed "
                        "name (default: the config's base_model, smollm2)")
    p.add_argument("--data", default=None,
                   help='JSONL training data: {"messages": [...]} chats or {"prompt", "completion"} '
                        "pairs, one per line")
    p.add_argument("--out", default=None, help="output directory (default: the config's out_dir)")
    p.add_argument("--config", help="TOML file: top-level SFTConfig keys, [peft], [optim], [schedule]")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides, e.g. peft.method=lora peft.r=16 steps=300 precision=bf16 "
                        "val_data=held.jsonl train_on_prompt=true pack=false")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")


def cmd_sft(args: argparse.Namespace) -> None:
    from lmstack.posttrain.sft_config import SFTConfig
    from lmstack.posttrain.sft_run import sft
    from lmstack.train.config import load_config

    flags = {"base_model": args.base_model, "data": args.data, "out_dir": args.out}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.set)
    cfg = load_config(args.config, overrides + (["resume=true"] if args.resume else []), kind=SFTConfig)
    result = sft(cfg)
    val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
    use = ("--model " + result.out_dir.as_posix() if cfg.peft.method == "full"
           else f"--model {cfg.base_model} --lora {result.out_dir.as_posix()}")
    print(f"fine-tuned {result.step} steps in {result.seconds:.1f} s; {val or 'no validation'}; "
          f"try it: lmstack chat {use}")
