"""The `lmstack` command: parses arguments and calls one function per subcommand.

    lmstack --help
    lmstack tokenizer train --vocab-size 8192 --out runs/tok.json      # on the stdlib corpus
    lmstack tokenizer inspect --tokenizer runs/tok.json --text "def f(): pass"
    lmstack data prepare --tokenizer runs/tok.json --out runs/data
    lmstack quickstart

Every subcommand is two functions in the package that does its work: `add_<name>_args(parser)`
declares its flags, `cmd_<name>(args)` runs it. COMMANDS below names them as "module:function"
strings, imported only when needed: the flags live in modules that import nothing heavy (the
package's `commands.py`, serve/terminal.py, quickstart.py), so `lmstack --help` and
`lmstack X --help` never load torch; the run lives where the work is (train/heads.py and
infer/quantize.py keep theirs) and is imported when the command runs.

Commands that run a model take `--threads` (one flag, added and applied here: see
`default_threads` for the measured default). Every --help shows each flag's default.

Errors raised on purpose (`lmstack.errors.LMStackError`) are printed as one line, without a
traceback, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from lmstack.errors import ConfigError, LMStackError
from lmstack.posttrain.commands import add_args, run_command


@dataclass(frozen=True)
class Command:
    """A subcommand: where its flags and its run are ("module:function"), and its help."""

    add_args: str | Callable[[argparse.ArgumentParser], None]
    run: str | Callable[[argparse.Namespace], object]
    help: str
    description: str
    threads: str | None = None  # it runs a model: "decode" or "compute" (see default_threads)


@dataclass(frozen=True)
class Group:
    """A subcommand with subcommands of its own (`lmstack tokenizer encode`)."""

    commands: dict[str, Command]
    help: str
    description: str


def cmd_train_with_samples(args: argparse.Namespace) -> None:
    """`lmstack train`, its progress samples drawn by the inference layer (which train may not
    import, so it is handed down from here)."""
    from lmstack.infer import sample_text
    from lmstack.train.commands import cmd_train

    cmd_train(args, sample=sample_text)


LORA_HELP = ("a PEFT adapter directory (adapter_config.json + adapter_model.safetensors: `lmstack sft`'s "
             "--out with peft.method lora, qlora, prompt or adapters, or a Hugging Face PEFT LoRA) put on "
             "--model as it was trained: LoRA merged into the weights (the base's speed); QLoRA over the "
             "base quantized as it trained; a soft prompt or Houlsby adapters as loaded. A quantized "
             "--model (a GGUF file such as smollm2, `lmstack quantize` output) is dequantized to float32 "
             "first, the floats `lmstack sft` trains on (float speed and memory; a line on stderr says so)")


REWARD_HELP = ("a reward model directory (`lmstack reward`'s --out: the model and reward_head.safetensors) "
               "that ranks the --best-of N samples instead of their mean log-probability; it must use "
               "--model's tokenizer (trained from the same model)")


def add_lora_flag(add_args: str, p: argparse.ArgumentParser, reward: bool = False) -> None:
    """A command's own flags, --lora DIR, and (`reward`) --reward-model DIR."""
    _load(add_args)(p)
    p.add_argument("--lora", metavar="DIR", default=None, help=LORA_HELP)
    if reward:
        p.add_argument("--reward-model", metavar="DIR", default=None, help=REWARD_HELP)


def cmd_with_adapter(run: str, args: argparse.Namespace) -> object:
    """A command run with its --lora adapter put on the model it loads, and its --reward-model
    ready to load: posttrain does both (infer and eval may not import posttrain, so they are
    handed down from here, as `adapt` and as `reward(policy_tokenizer, policy_name, template)`)."""
    adapt, extra = None, {}
    if args.lora is not None:
        from lmstack.posttrain.peft.multi_lora import inference_adapter

        adapt = inference_adapter(args.lora)
    if getattr(args, "reward_model", None) is not None:
        from lmstack.posttrain.reward_ranking import load_reward_ranker

        extra["reward"] = functools.partial(load_reward_ranker, args.reward_model)
    return _load(run)(args, adapt=adapt, **extra)


def with_lora(add_args: str, run: str, reward: bool = False) -> tuple[Callable, Callable]:
    """(add_args, run) of a command that takes --lora DIR (and, `reward`, --reward-model DIR)."""
    return (functools.partial(add_lora_flag, add_args, reward=reward),
            functools.partial(cmd_with_adapter, run))


TOKENIZER = {
    "train": Command("data.commands:add_tokenizer_train_args", "data.commands:cmd_tokenizer_train",
                     "train a tokenizer on a corpus",
                     "Train byte-level BPE on documents (files, directories, globs, JSONL, or the "
                     "built-in 'stdlib' corpus)."),
    "encode": Command("tokenizer.commands:add_encode_args", "tokenizer.commands:cmd_encode",
                      "text -> token ids",
                      "Encode text to ids. Text that spells a special token is an error unless "
                      "--allow-special."),
    "decode": Command("tokenizer.commands:add_decode_args", "tokenizer.commands:cmd_decode",
                      "token ids -> text",
                      "Decode ids (arguments or stdin, spaces or commas)."),
    "inspect": Command("tokenizer.commands:add_inspect_args", "tokenizer.commands:cmd_inspect",
                       "show how text splits into tokens",
                       "With text: its pieces and tokens. Without: a summary of the tokenizer."),
    "export-hf": Command("tokenizer.commands:add_export_hf_args", "tokenizer.commands:cmd_export_hf",
                         "write a Hugging Face tokenizer.json",
                         "Export to a tokenizer.json that `tokenizers` loads and that encodes to "
                         "the same ids."),
}

DATA = {
    "prepare": Command("data.commands:add_prepare_args", "data.commands:cmd_prepare",
                       "clean + dedup + tokenize into shards",
                       "Read sources, normalize, filter, scrub PII and secrets, deduplicate, and "
                       "write uint16/uint32 token shards with a report."),
    "synth": Command("data.commands:add_synth_args", "data.commands:cmd_synth",
                     "write synthetic arithmetic expressions",
                     "Random expression trees with their values, e.g. (3+(4*2))=11, one per line."),
}

COMMANDS: dict[str, Command | Group] = {
    "tokenizer": Group(TOKENIZER, "train, use and inspect byte-level BPE tokenizers",
                       "Byte-level BPE tokenizers: train, encode, decode, inspect, export to "
                       "Hugging Face."),
    "data": Group(DATA, "prepare training data",
                  "Clean, deduplicate and tokenize corpora into shards."),
    "train": Command("train.commands:add_train_args", cmd_train_with_samples,
                     "pretrain a model on token shards",
                     "Teacher-forcing training of any model (GPT, LSTM, GRU, n-gram) on shards from "
                     "`lmstack data prepare`. Config from TOML (see configs/), overridden by --set "
                     "key=value. Under torchrun it runs DDP (or FSDP with --set parallel=fsdp).",
                     threads="compute"),
    "eval": Command(*with_lora("eval.commands:add_eval_args", "eval.commands:cmd_eval"),
                    "perplexity and bits per byte of a model on a text file",
                    "Score held-out text with a model directory; texts longer than the context "
                    "are scored with a sliding window.", threads="compute"),
    "generate": Command(*with_lora("infer.commands:add_generate_args", "infer.commands:cmd_generate",
                                   reward=True),
                        "generate text from a model, streaming",
                        "Continue --prompt with a model directory. Greedy when --temperature 0; "
                        "beam search with --num-beams N; best-of-N with --best-of N (ranked by a "
                        "reward model with --reward-model DIR). Every generation setting is a flag.",
                        threads="decode"),
    "sample-compare": Command("infer.commands:add_sample_compare_args",
                              "infer.commands:cmd_sample_compare",
                              "one prompt under greedy/temperature/top-k/top-p/beam",
                              "Continue the same prompt with several decoding strategies (same "
                              "seed) and print them side by side.", threads="decode"),
    "query": Command("infer.program.commands:add_query_args", "infer.program.commands:cmd_query",
                     "run a prompt program written in the query language (.lmql)",
                     "Run an LMQL-style query file: a decoder, a prompt with [HOLES] and "
                     "{expressions}, `from` a model and `where` constraints "
                     "(docs/programs.md).", threads="decode"),
    "serve": Command("serve.commands:add_serve_args", "serve.commands:cmd_serve",
                     "OpenAI-compatible HTTP server with a web chat page",
                     "Serve a model directory over the OpenAI API (/v1/completions, "
                     "/v1/chat/completions, streaming), with continuous batching, /metrics and a "
                     "web chat page at /.", threads="decode"),
    "chat": Command(*with_lora("serve.terminal:add_chat_args", "serve.terminal:cmd_chat", reward=True),
                    "chat with a model in the terminal, streaming",
                    "A terminal chat: /reset, /set NAME VALUE, /show, /help, /quit. --best-of N "
                    "answers with the best of N sampled replies (--reward-model DIR ranks them).",
                    threads="decode"),
    "sft": Command(add_args("sft"), run_command("sft"),
                   "supervised fine-tuning (full, LoRA, ...) on chat JSONL",
                   "Fine-tune an existing model (directory, HF, GGUF or installed name) on chats "
                   "or prompt/completion pairs, the loss on the assistant's tokens only; fully or "
                   "with a PEFT method (peft.method=lora). Same loop, config and resume as train.",
                   threads="compute"),
    "reward": Command(add_args("reward"), run_command("reward"),
                      "train a reward model on preference pairs (Bradley-Terry)",
                      "The model with a scalar head, trained on (prompt, chosen, rejected) pairs; "
                      "accuracy on held-out pairs. Scores best-of-N in generate and serve.",
                      threads="compute"),
    "dpo": Command(add_args("dpo"), run_command("dpo"),
                   "direct preference optimization (DPO, IPO, SimPO, ORPO) on pairs",
                   "Train a policy on (prompt, chosen, rejected) pairs against a frozen "
                   "reference (or the policy with its LoRA adapters off); dpo.loss picks the "
                   "variant. Logs chosen/rejected rewards and margins.", threads="compute"),
    "rl": Command(add_args("rl"), run_command("rl"),
                  "reinforcement learning: GRPO or PPO, rollouts through the engine",
                  "Sample completions of prompts with the inference engine, score them (a "
                  "verifiable reward or a reward model), and train with GRPO's group-relative "
                  "advantages or PPO's value head and GAE.", threads="compute"),
    "distill": Command(add_args("distill"), run_command("distill"),
                       "distill a teacher into a student: data, logits (KD) or on-policy (GKD)",
                       "--mode data: the teacher writes the training set; kd: the student "
                       "matches the teacher's token distributions; gkd: on the student's own "
                       "samples, scored by the teacher.", threads="compute"),
    "train-heads": Command("train.commands:add_train_heads_args", "train.heads:cmd_train_heads",
                           "train Medusa heads on a frozen model (speculative decoding)",
                           "Train K Medusa heads on a frozen GPT's last hidden state; saved next "
                           "to the model as medusa_heads.safetensors + medusa_config.json.",
                           threads="compute"),
    "quantize": Command("infer.commands:add_quantize_args", "infer.commands:cmd_quantize",
                        "weight-only int8/int4 quantization of a model directory",
                        "Write a copy of --model with every Linear layer in int8 (per channel) or "
                        "int4 (groups of --group-size)."),
    "convert": Command("interop.commands:add_convert_args", "interop.commands:cmd_convert",
                       "convert between lmstack, Hugging Face and GGUF models",
                       "Import a local Hugging Face checkpoint (GPT-2, Llama, Mistral, Qwen2) or a "
                       "GGUF file (llama, mistral, qwen2; Q4_1 kept as int4) into an lmstack model "
                       "directory, or export an lmstack GPT to a directory transformers loads."),
    "models": Command(lambda p: None, "models.installed:cmd_models",
                      "list the real models installed as wheels, by short name",
                      "Short names (`--model smollm2`) of model files shipped in installed "
                      "wheels, with their sizes; and the pip line for those not installed."),
    "plot": Command("train.commands:add_plot_args", "train.commands:cmd_plot",
                    "draw loss curves of training runs to a PNG",
                    "Read each run's log.jsonl and plot train/val loss."),
    "quickstart": Command("quickstart:add_quickstart_args", "quickstart:cmd_quickstart",
                          "the main job on the built-in corpus",
                          "Train a tokenizer on the Python standard library, prepare token shards, "
                          "pretrain a small GPT, evaluate it and print samples. Reuses or resumes "
                          "what an earlier run left.", threads="compute"),
}


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with each flag's default appended to its help, as
    ArgumentDefaultsHelpFormatter does, except where the help already speaks of its default or
    there is nothing to show (None: "unset"; a bare on/off flag's False; an empty list)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and _shows_default(action):  # a flag with no help: its default
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not _shows_default(action):
            return text
        return f"{text} (default: %(default)s)"


def _shows_default(action: argparse.Action) -> bool:
    d = action.default
    return bool(action.option_strings) and not (d is None or d is False or d == []
                                                or d is argparse.SUPPRESS)


THREADS_HELP = {
    "decode": "torch intra-op threads (default: 1, the fastest for decoding, alone or not)",
    "compute": "torch intra-op threads (default: the cores idle when the command starts, "
               "shared among torchrun's local processes)",
}


def add_threads_arg(p: argparse.ArgumentParser, kind: str) -> None:
    """The --threads flag of every command that runs a model (applied by `apply_threads`)."""
    p.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP[kind])


def default_threads(kind: str) -> int:
    """Torch threads when --threads is not given, as measured (benchmarks/threads.py, AMD EPYC
    2 vCPU, docs/benchmarks.md "Threads"):

    - "decode" (generate, sample-compare, chat, serve): 1. A decode step is hundreds of tiny ops,
      each a parallel region whose threads meet at a barrier: a second thread is slower even on
      idle cores, and 3-6x slower once another process wants a core (the barrier waits for a
      thread the kernel has descheduled).
    - "compute" (train, eval, train-heads, quickstart): the cores idle right now, at least 1.
      Big batched matmuls gain from a second core when it is free (a training step 1.7x faster)
      and lose when it is not (up to 2.2x slower), so take only the free ones.
    """
    if kind == "decode":
        return 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))  # torchrun's processes
    return max(1, int(idle_cores() + 0.2) // local)


def idle_cores(interval: float = 0.2) -> float:
    """How many cores sat idle over the next `interval` seconds (Linux /proc/stat); elsewhere,
    every core."""
    def times() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]  # the "cpu" line: all cores
        return sum(fields[3:5]), sum(fields[:8])  # (idle + iowait, total) in ticks

    cores = os.cpu_count() or 1
    try:
        idle0, total0 = times()
        time.sleep(interval)
        idle1, total1 = times()
    except (OSError, ValueError):
        return float(cores)
    return cores * (idle1 - idle0) / max(total1 - total0, 1)


def apply_threads(threads: int | None, kind: str = "decode") -> int:
    """Set torch's intra-op threads to `threads` (None: `default_threads(kind)`); return it."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be a positive integer, got {threads}")
    import torch

    n = threads or default_threads(kind)
    torch.set_num_threads(n)
    return n


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; every subcommand's --help stands on its own."""
    parser = argparse.ArgumentParser(
        prog="lmstack", formatter_class=HelpFormatter,
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
        p = sub.add_parser(name, help=command.help, description=command.description,
                           formatter_class=HelpFormatter)
        if isinstance(command, Group):
            _add_commands(p, command.commands, "action", "ACTION")
            continue
        _load(command.add_args)(p)
        if command.threads:
            add_threads_arg(p, command.threads)
        p.set_defaults(func=command.run, threads_kind=command.threads)


def _load(ref: str | Callable) -> Callable:
    """"train.commands:cmd_plot" -> the function lmstack.train.commands.cmd_plot."""
    if callable(ref):
        return ref
    module, name = ref.split(":")
    return getattr(importlib.import_module(f"lmstack.{module}"), name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmstack` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.threads_kind:
            apply_threads(args.threads, args.threads_kind)
        if getattr(args, "model", None):  # a short name (`--model smollm2`) -> its file
            from lmstack.models.installed import resolve_model

            args.model = str(resolve_model(args.model))
        _load(args.func)(args)
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
