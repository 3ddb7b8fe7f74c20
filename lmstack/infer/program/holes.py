"""The holes of a prompt program: `gen` (the model writes it), `select` (the model picks one
of given options) and typed holes (`gen(..., type=int)`: the value is parsed).

A hole is a value description, not an action: `s += gen("answer", max_tokens=20)` hands it to
the program state (state.py), which fills it through its backend. Text and holes concatenate
into `Parts`, so `s += "A: " + gen("a") + "\\n"` appends three pieces in order.

    >>> g = gen("n", type=int)
    >>> g.regex, g.parse("42")
    ('-?[0-9]+', 42)
    >>> [type(p).__name__ for p in ("Q: " + g + "\\n").items]
    ['str', 'Gen', 'str']
    >>> gen("x", regex="a", json_schema={})
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: hole 'x' has 2 constraints (json_schema and regex); a hole follows one: keep one of them

Run the doctests: `pytest lmstack/infer/program/holes.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmstack.errors import ConfigError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Regexes of the typed holes that are plain numbers (a JSON number's shape, no exponent).
TYPE_REGEX = {int: r"-?[0-9]+", float: r"-?[0-9]+(\.[0-9]+)?", bool: r"(true|false)"}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"hole name {name!r} is not an identifier; name holes like `answer` "
                          "or `step_1`")
    return name


class _Concat:
    """`+` with text, other holes and Parts builds one Parts, in order."""

    def __add__(self, other: Any) -> Parts:
        return Parts([*_items(self), *_items(other)])

    def __radd__(self, other: Any) -> Parts:
        return Parts([*_items(other), *_items(self)])


def _items(x: Any) -> list:
    if isinstance(x, Parts):
        return list(x.items)
    if isinstance(x, (str, Gen, Select)):
        return [x]
    raise ConfigError(f"a program appends text and holes; got {type(x).__name__} {x!r} "
                      "(convert it with str(...))")


@dataclass(eq=False)
class Gen(_Concat):
    """A hole the model writes: `max_tokens`, `stop` strings, at most one constraint
    (`regex`, `json_schema`, `grammar`, `choices`), a `type` to parse the value as (int,
    float, bool, a pydantic model) and any other GenerationConfig setting in `settings`."""

    name: str
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    regex: str | None = None
    json_schema: dict | str | None = None
    grammar: str | None = None
    choices: list[str] = field(default_factory=list)
    type: Any = None
    temperature: float | None = None   # None: the program's decoder decides
    heal: bool | None = None           # token healing (healing.py); None: the program's default
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.type is not None:
            self._apply_type()
        given = [k for k in ("choices", "grammar", "json_schema", "regex")
                 if getattr(self, k) not in (None, [])]
        if len(given) > 1:
            raise ConfigError(f"hole {self.name!r} has {len(given)} constraints "
                              f"({' and '.join(given)}); a hole follows one: keep one of them")

    def _apply_type(self) -> None:
        """A typed hole's constraint: a number's regex, or the pydantic model's JSON Schema."""
        t = self.type
        if t in TYPE_REGEX:
            if self.regex is None and not self.choices:
                self.regex = TYPE_REGEX[t]
        elif hasattr(t, "model_json_schema") and hasattr(t, "model_validate_json"):
            if self.json_schema is None:
                self.json_schema = t.model_json_schema()
        elif t is not str:
            raise ConfigError(f"hole {self.name!r}: type {t!r} is not supported; use int, float, "
                              "bool, str or a pydantic model")

    @property
    def constrained(self) -> bool:
        """Whether a constraint (mask) shapes the value."""
        return any(getattr(self, k) not in (None, []) for k in ("choices", "grammar",
                                                                "json_schema", "regex"))

    def parse(self, text: str) -> Any:
        """The hole's value from its text: parsed by `type`, else the text itself."""
        t = self.type
        if t is None or t is str:
            return text
        try:
            if t is bool:
                return {"true": True, "false": False}[text.strip()]
            if t in (int, float):
                return t(text.strip())
            return t.model_validate_json(text)
        except (ValueError, KeyError) as e:  # pydantic's ValidationError is a ValueError
            raise ConfigError(f"{text!r} does not parse as "
                              f"{getattr(t, '__name__', t)} ({e}); the model stopped early "
                              "(raise max_tokens) or the constraint allows more than the type"
                              ) from None

    def config(self) -> dict[str, Any]:
        """The GenerationConfig settings of this hole (without the decoder's)."""
        out = dict(self.settings, max_new_tokens=self.max_tokens, stop=list(self.stop))
        for k in ("regex", "json_schema", "grammar"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.choices:
            out["choices"] = list(self.choices)
        if self.temperature is not None:
            out["temperature"] = self.temperature
        return out


@dataclass(eq=False)
class Select(_Concat):
    """A hole that is one of `options`: every option's log-probability is scored in one
    batched forward pass, then the best is taken (temperature 0) or one is sampled from
    softmax(scores / temperature). `normalize`: "sum" (the text's log-probability) or
    "mean" (per token, which does not favour short options)."""

    name: str
    options: list[str]
    temperature: float | None = None
    normalize: str = "sum"

    def __post_init__(self) -> None:
        _check_name(self.name)
        if isinstance(self.options, str) or not isinstance(self.options, Sequence):
            raise ConfigError(f"select {self.name!r}: options must be a list of strings, got "
                              f"{self.options!r}")
        self.options = list(self.options)
        if not self.options or any(not isinstance(o, str) or not o for o in self.options):
            raise ConfigError(f"select {self.name!r}: options must be non-empty strings, got "
                              f"{self.options!r}")
        if self.normalize not in ("sum", "mean"):
            raise ConfigError(f"select {self.name!r}: normalize must be 'sum' or 'mean', got "
                              f"{self.normalize!r}")


@dataclass
class Parts(_Concat):
    """Text and holes to append in order."""

    items: list


def gen(name: str, max_tokens: int = 64, stop: str | list[str] | None = None, *,
        regex: str | None = None, json_schema: dict | str | None = None,
        grammar: str | None = None, choices: list[str] | None = None, type: Any = None,
        temperature: float | None = None, heal: bool | None = None, **settings: Any) -> Gen:
    """A hole the model writes (see `Gen`); other GenerationConfig settings as keywords."""
    return Gen(name, max_tokens, [] if stop is None else stop, regex, json_schema, grammar,
               list(choices or []), type, temperature, heal, settings)


def select(name: str, options: Sequence[str], temperature: float | None = None,
           normalize: str = "sum") -> Select:
    """A hole that is one of `options`, chosen by scoring (see `Select`)."""
    return Select(name, options, temperature, normalize)


def schema_text(schema: dict | str) -> str:
    """A JSON Schema as compact text (for messages and the HTTP backend)."""
    return schema if isinstance(schema, str) else json.dumps(schema, separators=(",", ":"))
