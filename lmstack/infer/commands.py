"""`lmstack generate` and `lmstack sample-compare`: flags for every generation setting, streaming
to the terminal, and one prompt under several decoding strategies side by side.

    lmstack generate --model runs/quickstart --prompt "import os" --temperature 0.8 --top-p 0.95
    lmstack sample-compare --model runs/quickstart --prompt "def main(" --max-new-tokens 40
    lmstack generate --model runs/quickstart --medusa --prompt "import os"   # speculative
    lmstack generate --model runs/sft --prompt "2+2=" --best-of 8 --reward-model runs/rm

The flags are made from the fields of `GenerationConfig`, so a new setting is a new flag with no
other change: `top_p` is `--top-p`, a list is given as repeated values (`--stop "\\n\\n" "###"`),
`logit_bias` as ID=BIAS pairs, a boolean as a bare flag; the structured-output settings take a
file (`--json-schema FILE`, `--grammar FILE`) or text (`--regex`, `--choices A B C`). `--medusa [DIR]`, `--draft DIR` and
`--prompt-lookup N` decode through `Engine.speculative` (speculative.py): the same text as without
them (greedy) or the same distribution (sampling), in fewer forward passes of the model.
`--reward-model DIR` (cli.py hands its loader down: posttrain/reward_ranking.py) ranks the
--best-of N samples by a reward model instead of their mean log-probability.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from lmstack import MODEL_HELP
from lmstack.errors import ConfigError
from lmstack.infer.config import GenerationConfig

# Settings sample-compare shows, in order: (label, settings).
STRATEGIES: list[tuple[str, dict]] = [
    ("greedy", dict(temperature=0)),
    ("temperature 0.7", dict(temperature=0.7)),
    ("temperature 1.0", dict(temperature=1.0)),
    ("temperature 1.5", dict(temperature=1.5)),
    ("top-k 10", dict(temperature=1.0, top_k=10)),
    ("top-p 0.9", dict(temperature=1.0, top_p=0.9)),
    ("min-p 0.1", dict(temperature=1.0, min_p=0.1)),
    ("beam 4", dict(num_beams=4)),
]


def unescape(text: str) -> str:
    r"""Shell-typed escapes to characters: backslash-n is a newline, backslash-t a tab.

    >>> unescape(r"a\n\tb") == "a\n\tb"
    True
    """
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _bias(text: str) -> tuple[int, float]:
    try:
        token, value = text.split("=")
        return int(token), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID=BIAS like 50256=-100, got {text!r}") from None


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="run the model in this precision (default: as stored)")
    p.add_argument("--prompt", help="the prompt (\\n for newlines; default: stdin)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    add_generation_flags(p)
    add_speculation_flags(p)


def add_sample_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="run the model in this precision (default: as stored)")
    p.add_argument("--prompt", help="the prompt (default: stdin)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)


def _file_text(path: str) -> str:
    """The UTF-8 text of a file a flag names (--grammar FILE), with errors that say which."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e}") from None


# Structured-output settings whose flags take a file, or text: (type, metavar, help).
TEXT_FLAGS = {
    "json_schema": (_file_text, "FILE", "the reply is JSON valid under this JSON Schema file"),
    "grammar": (_file_text, "FILE", "the reply follows this grammar (Lark EBNF, or GBNF)"),
    "regex": (str, "REGEX", "the whole reply matches this regular expression"),
    "constraint_engine": (str, "NAME", "fast (default) or reference (readable, slow)"),
}


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    """One flag per `GenerationConfig` field, defaulting to None (= the config's default)."""
    hints = typing.get_type_hints(GenerationConfig)
    for f in fields(GenerationConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        hint = str(hints[f.name])
        help_text = f"default {default!r}"
        if f.name in TEXT_FLAGS:
            kind, metavar, text = TEXT_FLAGS[f.name]
            p.add_argument(flag, type=kind, metavar=metavar, help=text)
        elif f.name == "logit_bias":
            p.add_argument(flag, nargs="+", type=_bias, metavar="ID=BIAS", help=help_text)
        elif hint.startswith("list[int]"):
            p.add_argument(flag, nargs="+", type=int, metavar="ID", help=help_text)
        elif hint.startswith("list[str]"):
            p.add_argument(flag, nargs="+", type=unescape, metavar="TEXT", help=help_text)
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif "int" in hint and "float" not in hint:
            p.add_argument(flag, type=int, metavar="N", help=help_text)
        else:
            p.add_argument(flag, type=float, metavar="X", help=help_text)


def add_speculation_flags(p: argparse.ArgumentParser) -> None:
    """The drafter flags of speculative decoding (at most one drafter), and --gamma."""
    g = p.add_argument_group("speculative decoding (greedy and sampling; output as without it)")
    g.add_argument("--medusa", nargs="?", const="", metavar="DIR",
                   help="draft with the Medusa heads `lmstack train-heads` wrote to DIR "
                        "(default: the --model directory)")
    g.add_argument("--draft", metavar="DIR", help="draft with this small model (same tokenizer)")
    g.add_argument("--prompt-lookup", type=int, metavar="N",
                   help="draft by copying what followed the last N tokens earlier in the text (3)")
    g.add_argument("--gamma", type=int, metavar="N",
                   help="most tokens drafted per round (default 4, or the number of Medusa heads)")


def speculative_from_args(engine, args: argparse.Namespace):
    """The `SpeculativeDecoder` the flags ask for, or None when they name no drafter."""
    asked = {flag: value for flag, value in (("--medusa", args.medusa), ("--draft", args.draft),
                                             ("--prompt-lookup", args.prompt_lookup))
             if value is not None}
    if len(asked) > 1:
        raise ConfigError(f"{' and '.join(asked)} name {len(asked)} drafters; speculative "
                          "decoding takes one: keep one of them")
    if not asked:
        if args.gamma is not None:
            raise ConfigError("--gamma is the number of tokens a drafter proposes; name the drafter "
                              "too: --medusa [DIR], --draft DIR or --prompt-lookup N")
        return None
    from lmstack.infer.engine import Engine

    options = {"gamma": args.gamma}
    if args.draft is not None:
        options["draft"] = Engine.load(args.draft, dtype=args.dtype)
    elif args.prompt_lookup is not None:
        options["prompt_lookup"] = args.prompt_lookup
    else:  # a bare --medusa: the heads train-heads saved next to the model
        options["medusa"] = args.medusa or args.model
    return engine.speculative(**options)


def check_speculable(cfg: GenerationConfig, spec) -> None:
    """Refuse, in the CLI's words, settings speculative decoding cannot do."""
    if spec is not None and (cfg.strategy not in ("greedy", "sample") or cfg.num_return_sequences > 1):
        raise ConfigError(f"speculative decoding (--medusa/--draft/--prompt-lookup) does greedy and "
                          f"sampling only, not {cfg.strategy}; drop --num-beams/--best-of/"
                          "--num-return-sequences or the drafter flag")


def check_rankable(cfg: GenerationConfig, reward) -> None:
    """Refuse a --reward-model with nothing to rank: it chooses among --best-of N samples."""
    if reward is not None and cfg.strategy != "best_of":
        raise ConfigError(f"--reward-model ranks the samples of best-of-N, and this is {cfg.strategy} "
                          "decoding; add --best-of N (N >= 2, with --temperature above 0) or drop "
                          "--reward-model")


def settings_from_args(args: argparse.Namespace) -> dict:
    """The generation settings given on the command line."""
    out = {}
    for f in fields(GenerationConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = dict(value) if f.name == "logit_bias" else value
    return out


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return unescape(args.prompt)
    if not sys.stdin.isatty():
        return sys.stdin.read()
    raise ConfigError("give a prompt with --prompt TEXT (or pipe it on stdin)")


def check_prompt(engine, prompt: str, model_dir: str) -> None:
    """Refuse, in a CLI user's words, a prompt the engine would refuse as "prompt 0" (it speaks to
    Python callers, who may pass a batch, or token ids where a model has no tokenizer)."""
    from lmstack.infer.sampling import context_length

    if engine.tokenizer is None:
        raise ConfigError(f"{model_dir} has no tokenizer.json, so the prompt cannot be encoded; "
                          "copy the tokenizer the model was trained with into that directory")
    n, ctx = len(engine.encode(prompt)), context_length(engine.model)
    if n == 0:
        raise ConfigError("the prompt is empty; give --prompt some text (or '<|endoftext|>' to "
                          "generate from nothing)")
    if ctx is not None and n >= ctx:
        raise ConfigError(f"the prompt has {n} tokens but the model's context is {ctx}: no room to "
                          f"generate; shorten --prompt to at most {ctx - 1} tokens")


def cmd_generate(args: argparse.Namespace, adapt=None, reward=None) -> None:
    """Generate from --prompt, streaming to stdout (one completion) or printing each; `adapt`
    changes the model as loaded (--lora DIR: its adapter put on), `reward(tokenizer, name)`
    loads the --reward-model that ranks best-of-N samples (both handed down by cli.py)."""
    from lmstack.infer.engine import Engine

    engine = Engine.load(args.model, dtype=args.dtype, adapt=adapt)
    settings = settings_from_args(args)
    prompt = _prompt(args)
    check_prompt(engine, prompt, args.model)
    cfg = engine.config(None, **settings)
    check_rankable(cfg, reward)
    spec = speculative_from_args(engine, args)
    check_speculable(cfg, spec)
    if cfg.strategy in ("greedy", "sample") and cfg.num_return_sequences == 1:
        decoder = spec or engine  # both stream the same text; spec in fewer forward passes
        if args.echo:
            print(prompt, end="", flush=True)
        for delta in decoder.stream(prompt, cfg):
            print(delta, end="", flush=True)
        print()
        done = decoder.last
        print(f"[{len(done.tokens)} tokens, finish_reason={done.finish_reason}"
              f"{'' if spec is None else format_spec_stats(spec.stats)}{_cut_short(done)}]",
              file=sys.stderr)
        if cfg.logprobs:
            print(format_logprobs(engine, done), file=sys.stderr)
        return
    # the reward of prompt + reply, as a reward model reads plain text (posttrain/reward_ranking.py)
    scorer = reward(engine.tokenizer, args.model).scorer() if reward is not None else None
    result = engine.generate(prompt, cfg, scorer=scorer)
    label = "score" if scorer is None else "reward"
    for i, c in enumerate(result if isinstance(result, list) else [result]):
        score = "" if c.score is None else f", {label} {c.score:.3f}"
        print(f"--- {i} ({len(c.tokens)} tokens, finish_reason={c.finish_reason}{score}"
              f"{_cut_short(c)})")
        print((prompt if args.echo else "") + c.text)
        if cfg.logprobs and c.logprobs:
            print(format_logprobs(engine, c))


def _cut_short(completion) -> str:
    """The status line's warning when max_new_tokens ended a constrained reply mid-value."""
    if completion.complete is False:
        return ("; the reply is cut short of the constraint's language (not valid): raise "
                "--max-new-tokens")
    return ""


def format_spec_stats(stats) -> str:
    """A speculative call's counts, for the status line.

    >>> from lmstack.infer.speculative import SpecStats
    >>> format_spec_stats(SpecStats(proposed=8, accepted=6, target_passes=4, new_tokens=10))
    ', speculative: 6/8 drafts accepted (75%), 2.50 tokens per forward pass'
    """
    return (f", speculative: {stats.accepted}/{stats.proposed} drafts accepted "
            f"({stats.acceptance_rate:.0%}), {stats.tokens_per_pass:.2f} tokens per forward pass")


def format_logprobs(engine, completion) -> str:
    """One line per generated token: its text, log-probability and the top alternatives."""
    show = (lambda i: repr(engine.tokenizer.decode([i]))) if engine.tokenizer else str
    lines = []
    for i, (token, lp) in enumerate(zip(completion.tokens, completion.logprobs)):
        alts = completion.top_logprobs[i] if i < len(completion.top_logprobs) else []
        alt_text = "  ".join(f"{show(t)} {v:.2f}" for t, v in alts)
        lines.append(f"{show(token):>14} {lp:8.3f}" + (f"   | {alt_text}" if alt_text else ""))
    return "\n".join(lines)


def compare(engine, prompt: str, max_new_tokens: int = 40, seed: int = 0,
            strategies: list[tuple[str, dict]] = STRATEGIES) -> list[tuple[str, str]]:
    """(label, text) for the prompt under each strategy, same seed for all."""
    return [(label, engine.generate(prompt, max_new_tokens=max_new_tokens, seed=seed, **s).text)
            for label, s in strategies]


def format_compare(rows: list[tuple[str, str]], width: int | None = None) -> str:
    """Rows as a two-column table: the strategy, then its text wrapped (newlines shown as ⏎).

    >>> print(format_compare([("greedy", "a\\nb")], width=30))
    greedy | a⏎b
    """
    width = width or shutil.get_terminal_size((100, 20)).columns
    label_w = max(len(label) for label, _ in rows)
    text_w = max(width - label_w - 3, 20)
    lines = []
    for label, text in rows:
        wrapped = textwrap.wrap(text.replace("\n", "⏎"), text_w, drop_whitespace=False) or [""]
        lines.append(f"{label.ljust(label_w)} | {wrapped[0]}")
        lines += [f"{'':{label_w}} | {w}" for w in wrapped[1:]]
    return "\n".join(lines)


def cmd_sample_compare(args: argparse.Namespace) -> None:
    """Print the prompt's continuations under every strategy of STRATEGIES."""
    from lmstack.infer.engine import Engine

    engine = Engine.load(args.model, dtype=args.dtype)
    prompt = _prompt(args)
    check_prompt(engine, prompt, args.model)
    print(f"prompt: {prompt!r}\n")
    print(format_compare(compare(engine, prompt, args.max_new_tokens, args.seed)))


def add_quantize_args(p: argparse.ArgumentParser) -> None:
    """Flags of `lmstack quantize` (run by cmd_quantize below, which checks them
    against its BITS and GROUP_SIZES; a test holds the choices here equal to those)."""
    p.add_argument("--model", required=True,
                   help="model to quantize: a float directory, a .gguf file (dequantized "
                        "first) or a short name")
    p.add_argument("--out", required=True, help="directory to write the quantized model to")
    p.add_argument("--bits", type=int, required=True, choices=(4, 8),
                   help="8: int8 per output channel; 4: int4 in groups with scales and zero points")
    p.add_argument("--group-size", type=int, default=64,
                   help="int4 group size along the input width: 32, 64, 128 or 256")
    p.add_argument("--skip", nargs="*", default=[],
                   help="layers kept in float (full names or last parts, e.g. lm_head)")


def cmd_quantize(args: argparse.Namespace) -> int:
    """`lmstack quantize`: load --model, quantize, write --out (config, weights, tokenizer, eos
    ids, chat template). A GGUF file's quantized matrices are dequantized first (exact), then
    quantized as asked (quantize.py)."""
    from torch import nn

    from lmstack.atomic import output_dir
    from lmstack.infer.quantize import (
        QuantLinear,
        check_quantization,
        dequantize_model,
        model_bytes,
        quantize_model,
    )
    from lmstack.models.directory import (
        find_format,
        load_model,
        save_companions,
        save_model,
    )

    check_quantization(args.bits, args.group_size)
    fmt = find_format(args.model).name
    if fmt == "quantized":
        raise ConfigError(f"{args.model} is already quantized; quantize the fp32 model it came from")
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise ConfigError("--out must differ from --model (the fp32 weights would be overwritten)")
    model = load_model(args.model)
    if not any(isinstance(m, nn.Linear | QuantLinear) for m in model.modules()):
        raise ConfigError(f"{args.model} has no Linear layers to quantize (n-gram models have no weights)")
    dequantize_model(model)  # a GGUF file's Q4_1 matrices: back to the floats they stand for
    before = model_bytes(model)
    quantize_model(model, args.bits, args.group_size, skip=args.skip)
    with output_dir(args.out):
        out = save_model(args.out, model)
        save_companions(args.model, out)
    after = os.path.getsize(out / "model.safetensors")
    label = "int8" if args.bits == 8 else f"int4 g{args.group_size}"
    print(f"wrote {out} ({label}): {after / 1e6:.1f} MB on disk, fp32 tensors were {before / 1e6:.1f} MB")
    return 0
