"""Chat templates: how a list of chat messages becomes the one prompt string a model reads.

A chat model was fine-tuned on conversations written in a fixed format, with special tokens
around each turn. ChatML, which our tokenizers' specials are made for, writes

    <|im_start|>system
    You are terse.<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant

and the model's reply is the text it generates until it emits `<|im_end|>`. Other families use
other markers (Llama 3: `<|start_header_id|>user<|end_header_id|>` ... `<|eot_id|>`; Zephyr:
`<|user|>` ... `</s>`), so the format travels with the model: Hugging Face stores it as a Jinja2
template in `tokenizer_config.json` (key `chat_template`, or in a `chat_template.jinja` file),
GGUF in its `tokenizer.chat_template` metadata (SmolLM2's adds a default system prompt),
rendered with the variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token` (and
`tools`) and two helper functions, `raise_exception` and `strftime_now`. Since a template comes
with a downloaded model it is untrusted code, so it is rendered in Jinja's immutable sandbox,
which refuses attribute tricks and mutation of the objects passed in.

    template = model_chat_template("runs/sft")   # lmstack.models.directory: the model's, else ChatML
    prompt = template.render([{"role": "user", "content": "Hi"}])
    engine.generate(prompt, stop_token_ids=template.stop_tokens(engine.tokenizer))

Run the tests: `pytest tests/tokenizer/test_chat_template.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmstack.errors import ConfigError
from lmstack.tokenizer.special import ENDOFTEXT, IM_END

ROLES = ("system", "user", "assistant", "tool", "developer")

# ChatML. The '\n' are Jinja escapes inside Jinja strings, so the template has no layout
# newlines of its own and renders the same with or without trim_blocks.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def field_error(param: str, problem: str) -> ConfigError:
    """A ConfigError whose message starts with the field path, which it also keeps in `param`.

    >>> e = field_error("messages[1].role", "must be one of system, user")
    >>> str(e), e.param
    ('messages[1].role must be one of system, user', 'messages[1].role')
    """
    err = ConfigError(f"{param} {problem}")
    err.param = param  # the server reports it as the OpenAI error's "param"
    return err


def _flatten(content: Any, where: str) -> str:
    """A message's content as one string: a string as is, OpenAI text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise field_error(where, f"must be a string or a list of text parts, got "
                                 f"{type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise field_error(at, f"must be an object like {{\"type\": \"text\", \"text\": ...}}, "
                                  f"got {type(part).__name__}")
        if part.get("type") != "text":
            raise field_error(f"{at}.type", f"must be 'text', got {part.get('type')!r}; this "
                                            "model reads text only")
        if not isinstance(part.get("text"), str):
            raise field_error(f"{at}.text", "must be a string")
        texts.append(part["text"])
    # Parts are usually separate paragraphs (vLLM joins them the same way).
    return "\n".join(texts)


def validate_messages(messages: Any) -> list[dict]:
    """Check chat messages; return copies whose content is a plain string.

    >>> validate_messages([{"role": "user", "content": [{"type": "text", "text": "Hi"},
    ...                                                  {"type": "text", "text": "there"}]}])
    [{'role': 'user', 'content': 'Hi\\nthere'}]
    >>> validate_messages([])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: messages must be a non-empty list of {"role": ..., "content": ...} objects
    >>> validate_messages([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: messages[1].role must be one of system, user, assistant, tool, developer; got 'bot'
    >>> validate_messages([{"role": "user"}])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: messages[0].content is required
    >>> validate_messages([{"role": "user", "content": [{"type": "image_url"}]}])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: messages[0].content[0].type must be 'text', got 'image_url'; this model reads text only
    """
    if not isinstance(messages, list) or not messages:
        raise field_error("messages", 'must be a non-empty list of {"role": ..., "content": ...} '
                                      "objects")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise field_error(where, f"must be an object with role and content, got "
                                     f"{type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise field_error(f"{where}.role", f"must be one of {', '.join(ROLES)}; got {role!r}")
        if message.get("content") is None and role == "assistant" and message.get("tool_calls"):
            message = {**message, "content": ""}  # a call, no text (tools.py writes it out)
        if message.get("content") is None:
            raise field_error(f"{where}.content", "is required")
        # Other keys (name, tool_call_id, ...) pass through: some templates read them.
        out.append({**message, "content": _flatten(message["content"], f"{where}.content")})
    return out


def _raise_exception(message: str) -> None:
    # Templates call this to refuse a conversation (e.g. roles that do not alternate).
    err = ConfigError(f"the chat template refused the messages: {message}")
    err.param = "messages"
    raise err


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; a prompt wants the JSON as written.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox HF renders templates in: trimmed blocks, loop controls, its helpers."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@dataclass
class ChatTemplate:
    """A compiled Jinja chat template and the bos/eos strings it may write."""

    source: str = DEFAULT_TEMPLATE
    bos_token: str = ""
    eos_token: str = ENDOFTEXT
    _compiled: jinja2.Template = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compile now so a broken template fails when the model loads, not at the first request.
        try:
            self._compiled = _environment().from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(f"the chat template has a syntax error at line {e.lineno}: "
                              f"{e.message}; fix chat_template in tokenizer_config.json") from None

    @classmethod
    def from_config(cls, config: dict) -> ChatTemplate:
        """The template of a tokenizer_config.json-style dict ({"chat_template", "bos_token",
        "eos_token"}; a model's: `lmstack.models.directory.model_chat_template`), else ChatML."""
        return cls(source=config.get("chat_template") or DEFAULT_TEMPLATE,
                   bos_token=config.get("bos_token", ""),
                   eos_token=config.get("eos_token") or ENDOFTEXT)

    @property
    def reads_tools(self) -> bool:
        """Whether the template renders the `tools` of a function-calling request itself."""
        return "tools" in self.source

    def render(self, messages: Any, add_generation_prompt: bool = True,
               tools: list[dict] | None = None, **variables: Any) -> str:
        """The prompt for `messages` (validated first); with add_generation_prompt it ends
        where the assistant's reply begins. `tools`: OpenAI's tool list, for templates that
        read it."""
        messages = validate_messages(messages)
        try:
            return self._compiled.render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token, tools=tools, **variables)
        except ConfigError:
            raise  # raise_exception: already says what the template refused
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            raise ConfigError(f"the chat template failed while rendering: {type(e).__name__}: "
                              f"{e}") from None

    def end_marker(self) -> str | None:
        """The text the template writes right after an assistant message, up to the line's end
        (its end-of-turn marker: `<|im_end|>`, `</s>`), or None if it writes none.

        >>> ChatTemplate().end_marker()
        '<|im_end|>'
        """
        probe = "lmstack-end-of-turn-probe"
        try:
            text = self.render([{"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": probe}], add_generation_prompt=False)
        except ConfigError:
            return None  # a template with stricter rules: fall back to <|im_end|> and eos
        if probe not in text:
            return None
        after = text[text.rindex(probe) + len(probe):].lstrip()
        return after.split("\n", 1)[0].rstrip() or None

    def end_of_turn(self, specials: dict[str, int]) -> str | None:
        """The special token the template writes right after an assistant message, if any."""
        after = self.end_marker() or ""
        for s in sorted(specials, key=len, reverse=True):
            if after.startswith(s):
                return s
        return None

    def stop_tokens(self, tokenizer: Any) -> list[int]:
        """Ids that end an assistant turn: the template's end-of-turn token, <|im_end|> and
        eos, those of them the tokenizer has as special tokens."""
        specials: dict[str, int] = dict(getattr(tokenizer, "special_tokens", None) or {})
        names = {self.end_of_turn(specials), IM_END, self.eos_token}
        return sorted({specials[n] for n in names if n in specials})
