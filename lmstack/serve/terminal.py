"""`lmstack chat`: talk to a model in the terminal, replies streamed as they are generated.

    lmstack chat --model runs/sft --system "You are terse." --temperature 0.7

Each line you type is a user message; the whole conversation is rendered with the model's chat
template (chat_template.py) and the model writes until its end-of-turn token. Lines that start
with "/" are commands: /set NAME VALUE changes any generation setting (the fields of
`GenerationConfig`), /show lists them, /reset forgets the conversation, /help, /quit. Ctrl-C
stops a reply (the chat goes on); Ctrl-D or /quit leaves. When the conversation no longer fits
the model's context the oldest exchanges are dropped (the system message is kept) and you are
told so. Input may be piped: `printf 'Hi\\n/quit\\n' | lmstack chat --model runs/sft`.
`--medusa [DIR]`, `--draft DIR` or `--prompt-lookup N` write each reply through the speculative
decoder (lmstack/infer/speculative.py): the same replies, in fewer forward passes.
`--best-of N` (or /set best_of N) answers with the best of N sampled replies, ranked by
`--reward-model DIR` (posttrain/reward_ranking.py) or else by mean log-probability.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any

from lmstack import MODEL_HELP
from lmstack.errors import ConfigError
from lmstack.infer.commands import (
    add_speculation_flags,
    check_rankable,
    speculative_from_args,
)
from lmstack.infer.config import GenerationConfig
from lmstack.tokenizer.chat_template import ChatTemplate

HELP = """commands:
  /set NAME VALUE   change a generation setting, e.g. /set temperature 0.7, /set stop ### "\\n\\n"
  /show             the current settings
  /reset            forget the conversation (the system message stays)
  /help             this help
  /quit             leave (Ctrl-D too); Ctrl-C stops a reply
  //text            send a message that starts with a slash ("/text")"""

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def parse_setting(name: str, text: str) -> Any:
    """A `GenerationConfig` field's value from the text typed after `/set NAME`.

    >>> parse_setting("temperature", "0.7"), parse_setting("max_new_tokens", "100")
    (0.7, 100)
    >>> parse_setting("stop", r'### "\\n\\n"'), parse_setting("seed", "none")
    (['###', '\\n\\n'], None)
    >>> parse_setting("logit_bias", "5=-100 7=2"), parse_setting("ignore_eos", "on")
    ({5: -100.0, 7: 2.0}, True)
    >>> parse_setting("top_k", "lots")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: top_k must be an integer, got 'lots'
    >>> parse_setting("temprature", "1")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: unknown setting 'temprature'; /show lists them
    """
    # The annotations as written ("int", "int | None", "list[str]"): config.py postpones them.
    hints = {f.name: str(f.type) for f in fields(GenerationConfig)}
    if name not in hints:
        raise ConfigError(f"unknown setting {name!r}; /show lists them")
    hint, text = hints[name], text.strip()
    try:
        if hint.startswith("list") or hint.startswith("dict"):
            # shlex, so a stop string may hold spaces ("User:  ") and several can be given.
            words = [w.replace("\\n", "\n").replace("\\t", "\t") for w in shlex.split(text)]
            if hint == "list[int]":
                return [int(w) for w in words]
            if hint.startswith("dict"):
                return {int(k): float(v) for k, v in (w.split("=") for w in words)}
            return words
        if "None" in hint and text.lower() in ("none", ""):
            return None
        if hint == "bool":
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if "int" in hint:
            return int(text)
        return float(text)
    except ValueError:
        kind = {"bool": "true or false", "float": "a number"}.get(hint, "an integer")
        if hint.startswith(("list", "dict")):
            kind = {"list[int]": "token ids", "list[str]": "strings"}.get(hint, "ID=BIAS pairs")
        raise ConfigError(f"{name} must be {kind}, got {text!r}") from None


class ChatSession:
    """A conversation with a model: its history, settings and the prompt they render to."""

    def __init__(self, engine: Any, template: ChatTemplate | None = None, system: str | None = None,
                 notify: Callable[[str], None] | None = None, decoder: Any = None,
                 ranker: Any = None, **settings: Any) -> None:
        if engine.tokenizer is None:
            raise ConfigError("lmstack chat needs the model's tokenizer.json")
        self.engine, self.system = engine, system
        self.decoder = decoder or engine  # what writes replies: the engine or a speculative one
        self.ranker = ranker  # a RewardRanker (posttrain/reward_ranking.py) ranks best-of-N replies
        self.template = template or ChatTemplate()
        self.notify = notify or (lambda text: print(text, file=sys.stderr, flush=True))
        self.config = engine.config(None, **settings)  # validated now: a bad flag fails early
        self.settings: dict[str, Any] = dict(settings)
        self.history: list[dict] = []
        # Always stop at the end of a turn, whatever the user sets stop_token_ids to.
        self.turn_end = self.template.stop_tokens(engine.tokenizer)
        self.last_prompt: str | None = None

    @property
    def messages(self) -> list[dict]:
        """The system message (if any) and the conversation so far."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history

    def set(self, name: str, text: str) -> None:
        """Change one generation setting from its typed text (ConfigError if invalid)."""
        value = parse_setting(name, text)
        self.config = self.engine.config(None, **{**self.settings, name: value})
        self.settings[name] = value

    def show(self) -> str:
        """One `name = value` line per setting."""
        return "\n".join(f"{f.name} = {getattr(self.config, f.name)!r}" for f in fields(self.config))

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.history.clear()

    def prompt(self) -> str:
        """The rendered prompt, after dropping the oldest exchanges if it does not fit."""
        ctx = getattr(self.engine.model.config, "block_size", None)
        # Leave room for a reply, not just one token, or a long chat gets only cut-off answers.
        room = max(1, min(self.config.max_new_tokens, (ctx or 2) // 2))
        dropped = 0
        while True:
            text = self.template.render(self.messages)
            n = len(self.engine.encode(text))
            if ctx is None or n + room <= ctx:
                break
            if len(self.history) <= 1:
                raise ConfigError(f"the message is too long: the prompt is {n} tokens and the "
                                  f"model's context is {ctx} ({room} kept for the reply); "
                                  "shorten it or /set max_new_tokens lower")
            # Drop the oldest user message and the replies to it, so the history still starts
            # with a user turn (many templates insist that roles alternate).
            del self.history[0]
            dropped += 1
            while len(self.history) > 1 and self.history[0]["role"] != "user":
                del self.history[0]
                dropped += 1
        if dropped:
            self.notify(f"[dropped the {dropped} oldest message(s) to fit the model's context "
                        f"of {ctx} tokens]")
        self.last_prompt = text
        return text

    def ask(self, text: str) -> Iterator[str]:
        """Add a user message and yield the reply's text as it is generated; the reply (or as
        much as was read, if the caller stops early or Ctrl-C hits) joins the history."""
        self.history.append({"role": "user", "content": text})
        try:
            prompt = self.prompt()
        except ConfigError:
            self.history.pop()  # unanswerable: do not keep it
            raise
        cfg = self.engine.config(
            self.config, stop_token_ids=sorted(set(self.config.stop_token_ids) | set(self.turn_end)))
        parts: list[str] = []
        try:
            for delta in self.replies(prompt, cfg):
                parts.append(delta)
                yield delta
        finally:
            self.history.append({"role": "assistant", "content": "".join(parts)})


    def replies(self, prompt: str, cfg: GenerationConfig) -> Iterator[str]:
        """The reply's text: streamed, or with best_of > 1 the best of the sampled replies in one
        piece (by the reward model when there is one, else by mean log-probability)."""
        if cfg.strategy != "best_of":
            yield from self.decoder.stream(prompt, cfg)
            return
        scorer = self.ranker.scorer(self.messages) if self.ranker is not None else None
        yield self.engine.generate(prompt, cfg, scorer=scorer).text


def handle_command(session: ChatSession, line: str, write: Callable[[str], None]) -> bool:
    """Run one /command; False means leave the chat."""
    name, _, rest = line[1:].strip().partition(" ")
    if name in ("quit", "exit", "q"):
        return False
    if name == "reset":
        session.reset()
        write("[conversation cleared]")
    elif name == "show":
        write(session.show())
    elif name == "help":
        write(HELP)
    elif name == "set":
        setting, _, value = rest.strip().partition(" ")
        if not setting:
            raise ConfigError("usage: /set NAME VALUE, e.g. /set temperature 0.7")
        session.set(setting, value)
        write(f"{setting} = {getattr(session.config, setting)!r}")
    else:
        raise ConfigError(f"unknown command /{name}; /help lists the commands")
    return True


def run_chat(session: ChatSession, read: Callable[[str], str] = input) -> None:
    """The read-reply loop, until /quit or end of input."""
    out = sys.stdout
    # Show the "you> " prompt only to a person: piped input would interleave it with replies.
    cue = "you> " if sys.stdin.isatty() else ""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    while True:
        try:
            line = read(cue)
        except EOFError:
            if cue:
                say("")
            return
        except KeyboardInterrupt:
            say("\n(Ctrl-D or /quit leaves)")
            continue
        if not line.strip():
            continue
        try:
            if line.startswith("/") and not line.startswith("//"):
                if not handle_command(session, line, say):
                    return
                continue
            reply = session.ask(line[1:] if line.startswith("//") else line)
            stopped = False
            try:
                for delta in reply:
                    out.write(delta)
                    out.flush()
            except KeyboardInterrupt:
                reply.close()  # the partial reply is kept in the history
                out.write("\n[stopped]")
                stopped = True
            out.write("\n")
            out.flush()
            last = getattr(session.decoder, "last", None)
            if not stopped and last is not None and last.finish_reason == "length":
                session.notify("[reply cut at max_new_tokens or the context; "
                               "/set max_new_tokens N for longer replies]")
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)


def add_chat_args(p: argparse.ArgumentParser) -> None:
    """The flags of `lmstack chat`."""
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--system", help="system message that starts the conversation")
    p.add_argument("--temperature", type=float, help="0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default 1.0 = off)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply (default 256)")
    p.add_argument("--seed", type=int, help="seed for sampling, for reproducible replies")
    p.add_argument("--best-of", type=int, help="answer with the best of N sampled replies "
                   "(default 1; ranked by --reward-model, else by mean log-probability)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="run the model in this precision (default: as stored)")
    add_speculation_flags(p)


def cmd_chat(args: argparse.Namespace, adapt=None, reward=None) -> None:
    """Load the model (changed by `adapt`: --lora DIR's adapter) and its chat template, and
    chat on stdin/stdout; `reward(tokenizer, name, template)` loads --reward-model (both handed
    down by cli.py)."""
    from lmstack.infer.engine import Engine
    from lmstack.models.directory import model_chat_template
    from lmstack.models.installed import model_name

    engine = Engine.load(args.model, dtype=args.dtype, adapt=adapt)
    template = model_chat_template(args.model)
    settings = {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p),
                                  ("max_new_tokens", args.max_new_tokens), ("seed", args.seed),
                                  ("best_of", args.best_of))
                if v is not None}
    check_rankable(engine.config(None, **settings), reward)
    ranker = reward(engine.tokenizer, args.model, template) if reward is not None else None
    spec = speculative_from_args(engine, args)
    session = ChatSession(engine, template, system=args.system, decoder=spec, ranker=ranker, **settings)
    if not session.turn_end:
        session.notify("[warning: the tokenizer has none of the template's end-of-turn tokens; "
                       "replies end only at max_new_tokens or a stop string]")
    session.notify(f"lmstack chat with {model_name(args.model)} ({args.model}); /help lists "
                   "the commands")
    run_chat(session)
