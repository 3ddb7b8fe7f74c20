"""The post-training commands from the shell: `lmstack sft`, `reward`, `dpo`, `rl`, `distill`.

    lmstack sft --model smollm2 --data chats.jsonl --out runs/sft --set peft.method=lora
    lmstack sft --config sft.toml --set steps=500 --resume
    lmstack dpo --model runs/sft --data pairs.jsonl --out runs/dpo --set dpo.beta=0.1
    lmstack rl --algo grpo --model runs/sft --data prompts.jsonl --out runs/grpo

Every one is a trainer run (lmstack/train/loop.py) with the same shape: a model (`--model`),
a JSONL file (`--data`), an output directory (`--out`), a TOML config (`--config`) whose keys
`--set` overrides, and `--resume`; some add a flag or two (RUNS below). Flags here are cheap to
import (`lmstack dpo --help` loads no torch); each run lives in its own module.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PosttrainCommand:
    """One post-training command: its config class, its run, and the help of its inputs."""

    config: str  # "module:Class", a TrainConfig subclass
    run: str  # "module:function", cfg -> TrainResult
    data: str  # what --data holds
    model: str = ("what to train from: a model directory, HF directory, GGUF file or installed "
                  "name (default: the config's base_model)")
    flags: tuple[tuple[str, str, str], ...] = ()  # (flag, config key, help) beyond the common ones
    then: str | None = None  # "module:function", (cfg, result) -> a line on what to do next


RUNS: dict[str, PosttrainCommand] = {
    "sft": PosttrainCommand(
        "lmstack.posttrain.sft_config:SFTConfig", "lmstack.posttrain.sft_run:sft",
        'JSONL training data: {"messages": [...]} chats or {"prompt", "completion"} pairs, one '
        "per line", then="lmstack.posttrain.sft_run:next_step"),
    "reward": PosttrainCommand(
        "lmstack.posttrain.reward_config:RewardConfig", "lmstack.posttrain.reward_run:train_reward",
        'JSONL preference pairs: {"prompt", "chosen", "rejected"} (text or messages), one per line',
        then="lmstack.posttrain.reward_run:next_step"),
    "dpo": PosttrainCommand(
        "lmstack.posttrain.dpo_config:DPOConfig", "lmstack.posttrain.dpo_run:dpo",
        'JSONL preference pairs: {"prompt", "chosen", "rejected"} (text or messages), one per line',
        flags=(("--reference", "reference", "the frozen reference model (default: --model itself; "
                "with LoRA, the policy with its adapters off)"),),
        then="lmstack.posttrain.sft_run:next_step"),
    "rl": PosttrainCommand(
        "lmstack.posttrain.rl_config:RLConfig", "lmstack.posttrain.rl_run:rl",
        'JSONL prompts: {"prompt": ... or "messages": [...], "answer": ...} (what the reward '
        "checks), one per line",
        flags=(("--algo", "algo", "grpo (group-relative advantages of k samples a prompt) or "
                "ppo (a value head and GAE)"),
               ("--reward", "reward", "the reward: exact_answer, json_schema, regex, or a reward "
                "model directory (`lmstack reward`'s --out)")),
        then="lmstack.posttrain.sft_run:next_step"),
    "distill": PosttrainCommand(
        "lmstack.posttrain.distill_config:DistillConfig", "lmstack.posttrain.distill_run:distill",
        'JSONL chats {"messages": [...]} or {"prompt", "completion"} pairs, one per line (kd, '
        'gkd: with answers; data: {"prompt"} alone will do, the teacher writes the answers)',
        model="the student: a model directory, HF directory, GGUF file or installed name",
        flags=(("--teacher", "teacher", "the teacher model (same tokenizer as the student for "
                "kd and gkd)"),
               ("--mode", "mode", "data (the teacher writes the training set), kd (its logits) "
                "or gkd (on-policy: the student samples, the teacher scores)")),
        then="lmstack.posttrain.sft_run:next_step"),
}


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def add_args(kind: str) -> Callable[[argparse.ArgumentParser], None]:
    """The argument adder of `lmstack KIND`: the common flags, then KIND's own."""
    spec = RUNS[kind]

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", dest="base_model", default=None, help=spec.model)
        p.add_argument("--data", default=None, help=spec.data)
        p.add_argument("--out", default=None, help="output directory (default: the config's out_dir)")
        for flag, key, text in spec.flags:
            p.add_argument(flag, dest=key, default=None, help=text)
        p.add_argument("--config", help="TOML file: the config's top-level keys and its tables")
        p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                       help="overrides, e.g. peft.method=lora steps=300 precision=bf16")
        p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    return add


def overrides(args: argparse.Namespace, kind: str) -> list[str]:
    """The flags as `key=value` overrides, before --set's (which win), and resume."""
    keys = ["base_model", "data", "out_dir"] + [key for _, key, _ in RUNS[kind].flags]
    flags = {k: getattr(args, "out" if k == "out_dir" else k) for k in keys}
    return ([f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.set)
            + (["resume=true"] if args.resume else []))


def run_command(kind: str) -> Callable[[argparse.Namespace], None]:
    """The command function of `lmstack KIND`: config from TOML + flags, the run, a summary."""
    spec = RUNS[kind]

    def command(args: argparse.Namespace) -> None:
        from lmstack.train.config import load_config

        cfg = load_config(args.config, overrides(args, kind), kind=_load(spec.config))
        result = _load(spec.run)(cfg)
        val = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in result.val.items())
        print(f"{kind}: {result.step} steps in {result.seconds:.1f} s; {val or 'no validation'}; "
              f"written to {result.out_dir.as_posix()}")
        if spec.then:
            print(_load(spec.then)(cfg, result))
    return command
