"""From a request's settings to its compiled constraint, in either engine.

`constraint_from(cfg)` reads the structured-output settings of a `GenerationConfig` (at most one
of json_object, json_schema, regex, grammar, choices) as a `Constraint`; `compile_constraint`
compiles it against a vocabulary with the engine asked for: "fast" (fast.py, a Rust library
driven from our vocabulary: what serving uses) or "reference" (reference.py: readable Python,
the one the tests hold the fast one against). Both cache compiled constraints by their text.

    >>> from lmstack.infer.config import GenerationConfig
    >>> constraint_from(GenerationConfig(regex=r"\\d+"))
    Constraint(kind='regex', value='\\\\d+')
    >>> constraint_from(GenerationConfig(grammar='root ::= "a"')).kind, grammar_kind("start: A")
    ('gbnf', 'lark')
    >>> constraint_from(GenerationConfig(json_object=True))
    Constraint(kind='json_schema', value={'type': 'object'})
    >>> constraint_from(GenerationConfig(regex="a", choices=["b"]))
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: choices and regex are 2 constraints; a reply follows one: keep one of them
"""

from __future__ import annotations

import importlib
import re

from lmstack.errors import ConfigError
from lmstack.infer.structured.constraint import CompiledConstraint, Constraint
from lmstack.infer.structured.vocab import TokenVocab

# engine name -> "module:function" (imported on first use: the fast engine loads a library)
ENGINES = {"fast": "lmstack.infer.structured.fast:compile_fast",
           "reference": "lmstack.infer.structured.reference:compile_reference"}
FIELDS = ("choices", "grammar", "json_object", "json_schema", "regex")  # GenerationConfig's


def grammar_kind(text: str) -> str:
    """'gbnf' for llama.cpp's GBNF (rules written `name ::= ...`), else 'lark' (Lark EBNF)."""
    return "gbnf" if re.search(r"^\s*[A-Za-z][\w-]*\s*::=", text, re.M) else "lark"


def constraint_from(cfg) -> Constraint | None:
    """The one constraint a GenerationConfig asks for, or None."""
    given = [name for name in FIELDS if getattr(cfg, name) not in (None, False, [])]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} are {len(given)} constraints; a reply "
                          "follows one: keep one of them")
    if not given:
        return None
    name = given[0]
    value = getattr(cfg, name)
    if name == "json_object":  # OpenAI's JSON mode: the reply is a JSON object
        return Constraint("json_schema", {"type": "object"})
    if name == "grammar":
        return Constraint(grammar_kind(value), value)
    return Constraint(name, value)


def compile_constraint(constraint: Constraint, vocab: TokenVocab, engine: str = "fast",
                       max_whitespace: int | None = 1) -> CompiledConstraint:
    """`constraint` compiled against `vocab` by the engine named (JSON with at most
    `max_whitespace` spaces or newlines between tokens; None: any); ConfigError for a
    constraint that is invalid, unsupported or allows no output at all."""
    if engine not in ENGINES:
        raise ConfigError(f"constraint_engine {engine!r} is unknown; use one of "
                          f"{', '.join(ENGINES)}")
    module, function = ENGINES[engine].split(":")
    compile_ = getattr(importlib.import_module(module), function)
    compiled = compile_(constraint, vocab, max_whitespace=max_whitespace)
    if not compiled.matcher().allowed().any():
        raise ConfigError(f"the {constraint.kind} constraint allows no output: no token of this "
                          "vocabulary can start a reply in its language")
    return compiled
