"""Config fields held to their declared type and range as they are parsed.

A training config is a tree of dataclasses (config.py). A value arrives as a TOML literal, from
a file or from `--set key=value`; `coerce` holds it to the field's annotation and a check
(`Range`, `OneOf`, `Matches`) to what the field allows. Either the value comes back, or a
`ConfigError` names the field, the value and what is allowed:

    >>> coerce(3, int, "steps"), coerce(2, float, "schedule.lr"), coerce(1e3, int, "steps")
    (3, 2.0, 1000)
    >>> coerce(2.5, int, "batch_size")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: batch_size must be a whole number, got 2.5
    >>> parse("nan", float, "schedule.lr")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: schedule.lr must be a finite number, got nan
    >>> parse("maybe", bool, "compile")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: compile must be true or false, got 'maybe'
    >>> parse("none", float | None, "max_minutes") is None, parse("2024", str, "out_dir")
    (True, '2024')
    >>> check(-1.0, float | None, "max_minutes", Range(0, lo_open=True, hint="unset: no limit"))
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: max_minutes must be > 0 (unset: no limit), got -1.0

Run: `pytest --doctest-modules lmstack/train/fields.py tests/train/test_config_errors.py`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmstack.errors import ConfigError

NoneType = type(None)


def parse_value(text: str) -> Any:
    """A TOML literal, or the bare text as a string.

    >>> parse_value("3e-4"), parse_value("true"), parse_value("gelu"), parse_value("[1, 2]")
    (0.0003, True, 'gelu', [1, 2])
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def members(tp: Any) -> tuple[Any, ...]:
    """The types a field admits: the members of a union (`int | None`), else the type itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


# ---- one converter per scalar type: (ok, value) -------------------------------------------


def _as_bool(v: Any) -> tuple[bool, Any]:
    return isinstance(v, bool), v


def _as_int(v: Any) -> tuple[bool, Any]:
    if isinstance(v, bool):  # Python's bool is an int; `steps=true` is still a mistake
        return False, v
    if isinstance(v, float) and v.is_integer():  # TOML reads 1e3 as a float
        return True, int(v)
    return isinstance(v, int), v


def _as_float(v: Any) -> tuple[bool, Any]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False, v
    try:
        v = float(v)
    except OverflowError:  # an int beyond float's range
        return False, v
    return math.isfinite(v), v


CONVERTERS: dict[Any, Callable[[Any], tuple[bool, Any]]] = {
    bool: _as_bool, int: _as_int, float: _as_float,
    str: lambda v: (isinstance(v, str), v), NoneType: lambda v: (v is None, v),
}
WORDS = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text",
         NoneType: "none (unset)"}


def _convert(kind: Any, v: Any) -> tuple[bool, Any]:
    if kind in CONVERTERS:
        return CONVERTERS[kind](v)
    origin = typing.get_origin(kind) or kind  # dict[str, Any] -> dict; a dataclass -> itself
    return isinstance(v, origin), v


def describe(tp: Any) -> str:
    """What a field of type `tp` accepts, in words.

    >>> describe(int | None), describe(dict[str, Any])
    ('a whole number or none (unset)', 'a table of settings')
    """
    def word(kind: Any) -> str:
        if kind in WORDS:
            return WORDS[kind]
        if dataclasses.is_dataclass(kind):
            names = ", ".join(f.name for f in dataclasses.fields(kind))
            return f"a table of settings (fields: {names})"
        return "a table of settings" if typing.get_origin(kind) is dict else str(kind)
    return " or ".join(word(k) for k in members(tp))


def coerce(value: Any, tp: Any, name: str) -> Any:
    """`value` as a field of type `tp` holds it (1 -> 1.0 for a float), or ConfigError."""
    for kind in members(tp):
        ok, converted = _convert(kind, value)
        if ok:
            return converted
    tables = any(typing.get_origin(k) is dict or dataclasses.is_dataclass(k) for k in members(tp))
    how = f"; set one entry with {name}.KEY=VALUE" if tables else ""
    raise ConfigError(f"{name} must be {describe(tp)}, got {value!r}{how}")


def parse(text: str, tp: Any, name: str) -> Any:
    """A `--set` value: the TOML literal `text` as type `tp`. `none` unsets an optional field;
    a text field takes the text as written (`out_dir=2024` is a path, not a number)."""
    kinds = members(tp)
    if NoneType in kinds and text.strip().lower() in ("none", "null"):
        return None
    value = parse_value(text)
    if str in kinds and not isinstance(value, str):
        value = text.strip()
    return coerce(value, tp, name)


# ---- checks beyond the type ---------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (either end optional, either open).

    >>> str(Range(1)), str(Range(0, 1, hi_open=True)), Range(0, lo_open=True)(0)
    ('>= 1', 'in [0, 1)', False)
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    hint: str = ""

    def __call__(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"in {left}{self.lo}, {self.hi}{right}"


@dataclass(frozen=True)
class OneOf:
    """value in choices."""

    choices: tuple
    hint: str = ""

    def __call__(self, v: Any) -> bool:
        return v in self.choices

    def __str__(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


@dataclass(frozen=True)
class Matches:
    """The whole text matches `pattern`; `words` says what that is."""

    pattern: str
    words: str
    hint: str = ""

    def __call__(self, v: str) -> bool:
        return re.fullmatch(self.pattern, v) is not None

    def __str__(self) -> str:
        return self.words


Check = Range | OneOf | Matches


def check(value: Any, tp: Any, name: str, rule: Check | None = None) -> Any:
    """`coerce`, then the field's `rule` (a None value, an unset field, passes it)."""
    value = coerce(value, tp, name)
    if rule is not None and value is not None and not rule(value):
        hint = f" ({rule.hint})" if rule.hint else ""
        raise ConfigError(f"{name} must be {rule}{hint}, got {value!r}")
    return value


def check_tree(obj: Any, rules: dict[str, Check], prefix: str = "") -> None:
    """Check (and convert in place) every field of a dataclass tree against its annotation
    and its rule in `rules` (keyed by dotted name: "schedule.lr")."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_tree(value, rules, f"{name}.")
        else:
            setattr(obj, f.name, check(value, hints[f.name], name, rules.get(name)))
