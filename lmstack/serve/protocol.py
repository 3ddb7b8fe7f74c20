"""The OpenAI API's request and response shapes, and how requests map onto `GenerationConfig`.

Requests are pydantic models in strict mode with unknown fields forbidden, so a wrong type
(`"temperature": "hot"`), an out-of-range value (`"top_p": 1.5`) or a misspelt field
(`"temprature"`) is a 400 that names the field, in OpenAI's error shape:

    {"error": {"message": "temperature: Input should be less than or equal to 2 ...",
               "type": "invalid_request_error", "param": "temperature", "code": null}}

Fields follow https://platform.openai.com/docs/api-reference (completions and chat
completions); `top_k`, `min_p` and `repetition_penalty` are extensions, as in vLLM.
Responses and stream chunks are built by the small functions at the end of this file.

Structured output: `response_format` ({"type": "json_object"}, {"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}) on both routes, and function calling on chat
(`tools`, `tool_choice`; tools.py) are constrained decoding (lmstack/infer/structured/): the
reply always parses and fits the schema, `strict` or not. vLLM's `guided_regex`,
`guided_choice` and `guided_grammar` are extensions under vLLM's names.

Best-of-N: `best_of` (completions, as OpenAI; on chat an lmstack extension, under the same name)
samples best_of replies per prompt and answers with the `n` best, ranked by the server's reward
model (`lmstack serve --reward-model DIR`) or else by mean log-probability; each such choice
carries an lmstack-specific `score` (serve/best_of.py).

Differences from OpenAI, on purpose: `echo` and `suffix` are rejected with a 400 rather than
ignored; a reply that fills the model's context ends with finish_reason "length" instead of a 400.
"""

from __future__ import annotations

import codecs
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmstack.infer.config import GenerationConfig


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error JSON.

    >>> error_body("n: too big", param="n")["error"]["param"]
    'n'
    """
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    """`stream_options`: only `include_usage` exists."""

    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    """`response_format.json_schema`: a named schema."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`response_format`: text (the default), any JSON object, or JSON under a schema."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a json_schema object with name and schema')
        return self

    def settings(self) -> dict:
        """The GenerationConfig fields this format sets."""
        if self.type == "json_schema":
            return {"json_schema": self.json_schema.schema_ or {"type": "object"}}
        return {"json_object": True} if self.type == "json_object" else {}


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Sampling(BaseModel):
    """Fields that completions and chat completions share."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=16)] = 1
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None   # chat: an lmstack extension
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    # Extensions (vLLM's names).
    top_k: Annotated[int, Field(ge=-1)] = 0
    min_p: Probability = 0.0
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = None
    guided_grammar: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"keys must be token ids written as strings, like \"50256\"; got {key!r}")
        return value

    def constraint_settings(self) -> dict:
        """The structured-output fields of GenerationConfig this request sets."""
        out = self.response_format.settings() if self.response_format is not None else {}
        guided = {"regex": self.guided_regex, "choices": self.guided_choice,
                  "grammar": self.guided_grammar}
        return {**out, **{k: v for k, v in guided.items() if v is not None}}

    def generation_config(self, max_new_tokens: int, stop_token_ids: list[int] | None = None,
                          constraint: dict | None = None) -> GenerationConfig:
        """These settings as a `GenerationConfig` (validated by the engine afterwards);
        `constraint` replaces the request's own structured-output fields (tool calls)."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationConfig(
            **(self.constraint_settings() if constraint is None else constraint),
            max_new_tokens=max_new_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=max(self.top_k, 0), min_p=self.min_p, repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            stop=[s for s in stop if s], stop_token_ids=list(stop_token_ids or []),
            ignore_eos=self.ignore_eos, seed=self.seed, logprobs=self.wants_logprobs,
            top_logprobs=self.top_logprob_count)

    @property
    def wants_logprobs(self) -> bool:
        return False

    @property
    def top_logprob_count(self) -> int:
        return 0

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: (Annotated[str, Field(max_length=1_000_000)] | Annotated[list[str], Field(min_length=1, max_length=64)]
             | Annotated[list[int], Field(min_length=1)]
             | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1, max_length=64)])
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: Literal[False] = False
    suffix: None = None

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    @property
    def top_logprob_count(self) -> int:
        return self.logprobs or 0

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts (text or token ids)."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class FunctionDef(BaseModel):
    """A tool's function: its name and the JSON Schema of its arguments."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """One entry of `tools`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: FunctionDef


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str


class NamedToolChoice(BaseModel):
    """`tool_choice` naming the function that must be called."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: FunctionName


class ChatRequest(_Sampling):
    """POST /v1/chat/completions. Messages are checked by chat_template.validate_messages."""

    messages: Annotated[list[Any], Field(min_length=1, max_length=1024)]
    tools: Annotated[list[Tool], Field(min_length=1, max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs

    @property
    def top_logprob_count(self) -> int:
        return (self.top_logprobs or 0) if self.logprobs else 0


# ---- responses -------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    """A response id like OpenAI's: 'cmpl-…' or 'chatcmpl-…'."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The `usage` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(id_: str, obj: str, model: str, choices: list[dict], **extra: Any) -> dict:
    """The fields every response and chunk has."""
    return {"id": id_, "object": obj, "created": int(time.time()), "model": model,
            "choices": choices, **extra}


def completion_logprobs(tokenizer, tokens: list[int], logprobs: list[float],
                        tops: list[list[tuple[int, float]]], offset: int) -> dict:
    """Legacy completions logprobs: parallel lists of tokens, logprobs, top alternatives and
    text offsets (character offset of each token in the returned text, starting at `offset`).
    A token that is not whole characters is spelled `bytes:\\xNN...`, as OpenAI does, so two
    halves of different characters stay two keys in `top_logprobs`."""
    raw = [raw_bytes(tokenizer, t) for t in tokens]
    return {"tokens": [token_text(b, "bytes:") for b in raw], "token_logprobs": logprobs,
            "top_logprobs": [{token_text(raw_bytes(tokenizer, i), "bytes:"): lp for i, lp in top}
                             for top in tops] if tops else None,
            "text_offset": text_offsets(raw, offset)}


def chat_logprobs(tokenizer, tokens: list[int], logprobs: list[float],
                  tops: list[list[tuple[int, float]]]) -> dict:
    """Chat logprobs: one entry per token with its UTF-8 `bytes` and its top alternatives; a
    token that is not whole characters is spelled `\\xNN...` (OpenAI's chat spelling, no prefix)."""
    def entry(token: int, lp: float) -> dict:
        raw = raw_bytes(tokenizer, token)
        return {"token": token_text(raw), "logprob": lp, "bytes": list(raw)}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in (tops[k] if tops else [])]}
                        for k, (t, lp) in enumerate(zip(tokens, logprobs))]}


def raw_bytes(tokenizer, token: int) -> bytes:
    """The bytes a token stands for (its id in ASCII when there is no tokenizer)."""
    return tokenizer.token_bytes(token) if tokenizer is not None else str(token).encode()


def token_text(raw: bytes, prefix: str = "") -> str:
    """A token's bytes as text; bytes that are not whole UTF-8 characters are written as escapes,
    every byte of the token, after `prefix` (OpenAI: "bytes:" in completions, "" in chat).

    >>> token_text("é".encode()), token_text(b"\\xc3", "bytes:"), token_text(b" \\xe2\\x82")
    ('é', 'bytes:\\\\xc3', '\\\\x20\\\\xe2\\\\x82')
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return prefix + "".join(f"\\x{b:02x}" for b in raw)


def text_offsets(raw: list[bytes], offset: int) -> list[int]:
    """Where each token starts in the reply's text, in characters, the first at `offset`.

    A token that continues a character starts where that character does. Leading continuation
    bytes finish a character that an earlier chunk of a stream began (at `offset`), so the first
    character that starts after them is at `offset + 1`.

    >>> text_offsets([b"caf", b"\\xc3", b"\\xa9", b"!"], 0)
    [0, 3, 3, 4]
    >>> text_offsets([b"\\x82", b"\\xac", b"x"], 7)
    [7, 7, 8]
    """
    data = b"".join(raw)
    tail = len(data) - len(data.lstrip(bytes(range(0x80, 0xC0))))  # the earlier chunk's character
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    chars, seen, offsets = (offset + 1 if tail else offset), 0, []
    for piece in raw:
        offsets.append(offset if seen < tail else chars)
        skip = min(max(tail - seen, 0), len(piece))
        chars += len(decoder.decode(piece[skip:]))
        seen += len(piece)
    return offsets
