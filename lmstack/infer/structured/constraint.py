"""What a constrained request asks for, and the interface every engine implements.

    >>> Constraint("regex", r"\\d+").key()
    ('regex', '\\\\d+')
    >>> Constraint("yaml", "x")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: unknown constraint kind 'yaml'; use one of json, json_schema, regex, lark, gbnf, choices

A `Matcher` is one row's live state: `allowed()` is the mask of the next token (an end id is
allowed exactly when the text so far is complete), `advance(id)` takes a token, `rollback(n)`
undoes the last n (speculative decoding rejects drafted tokens), `fork()` copies the state (beam
search, program forks), `is_accepting()` says the text is a complete member of the language and
`is_terminated()` that it is complete and nothing may follow, so the row stops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lmstack.errors import ConfigError

KINDS = ("json", "json_schema", "regex", "lark", "gbnf", "choices")


@dataclass(frozen=True)
class Constraint:
    """A constraint as the user gave it: `kind` in KINDS, `value` its text or object
    (json: None; json_schema: a dict or its JSON text; regex, lark, gbnf: text; choices: a list
    of strings)."""

    kind: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown constraint kind {self.kind!r}; use one of {', '.join(KINDS)}")

    def key(self) -> tuple[str, str]:
        """A hashable key of the constraint's text: compiled constraints are cached by it."""
        value = self.value
        if not isinstance(value, str):
            value = json.dumps(value, sort_keys=True, separators=(",", ":"))
        return self.kind, value


class Matcher(Protocol):
    """One row's state in a compiled constraint."""

    def allowed(self) -> np.ndarray:
        """Bool mask (vocab_size,) of the ids that may come next."""

    def advance(self, token_id: int) -> None:
        """Take one token; ConfigError if the mask did not allow it."""

    def rollback(self, n: int) -> None:
        """Undo the last `n` tokens taken."""

    def fork(self) -> Matcher:
        """An independent copy of this state."""

    def is_accepting(self) -> bool:
        """The text so far is a complete member of the language."""

    def is_terminated(self) -> bool:
        """Accepting, and no token but an end id may follow: the row is done."""


class CompiledConstraint(Protocol):
    """A constraint compiled against one vocabulary; cheap to start rows from."""

    def matcher(self) -> Matcher:
        """A fresh state at the start of the output."""
