"""JSON (any value) and JSON Schema (2020-12, the subset below) as a grammar of the IR.

The grammar generates a subset of the instances the schema accepts, always valid, written one
way: objects list their properties in schema order, required ones always, optional ones maybe,
then (only where additionalProperties is true or a schema) extra keys that differ from every
declared name; tokens are compact JSON with at most `JsonOptions.max_whitespace` (default 1)
whitespace characters (' ' or '\\n') in each gap between structural tokens (after { [ , : and
before } ] , :), so `{"a": 1, "b": [2, 3]}` and the compact form are both fine but a model
cannot loop on spaces. No whitespace before or after the whole value.

Keywords. type (one or a list), properties, required, additionalProperties (false, true or a
schema; absent: false when `properties` or `required` is given, else true, as OpenAI's strict
mode and xgrammar do), enum, const, anyOf, oneOf (as anyOf: an output that matches two
branches does not satisfy oneOf, so keep them disjoint), allOf (merged keyword by keyword where
that is exact, else an error), $ref to "#" or a JSON pointer into the document ($defs,
definitions; recursion is fine), items, prefixItems (absent items then means no more items),
minItems, maxItems, minLength, maxLength, pattern, format (json_lexemes.FORMATS), and
minimum, maximum, exclusiveMinimum, exclusiveMaximum for integers. Annotations (title,
description, ...) are ignored. Any other keyword is a ConfigError naming it: the engine never
pretends to enforce what it cannot. The schema is first checked against its meta-schema with the
`jsonschema` package when it is installed.

    >>> from lmstack.infer.structured.earley import EarleyRecognizer
    >>> from lmstack.infer.structured.recognizer import matches
    >>> s = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}},
    ...      "required": ["n"]}
    >>> r = EarleyRecognizer(schema_grammar(s).lower())
    >>> [matches(r, t) for t in (b'{"n":5}', b'{"n": 12}', b'{"n":0}', b'{}')]
    [True, True, False, False]
    >>> schema_grammar({"type": "string", "contentEncoding": "base64"})
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: JSON Schema keyword 'contentEncoding' (at #) is not supported: the output could not be guaranteed to satisfy it

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/json_schema.py
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from lmstack.errors import ConfigError
from lmstack.infer.structured.grammar import (
    EMPTY,
    NOTHING,
    Expr,
    Grammar,
    Ref,
    alt,
    chars,
    literal,
    repeat,
    seq,
    text,
)
from lmstack.infer.structured.json_lexemes import (
    format_string,
    integer_range,
    json_chars,
    number_expr,
    pattern_string,
    string_expr,
)
from lmstack.infer.structured.schema_merge import (
    ANNOTATIONS,
    merge_all,
    resolve_pointer,
    same_json,
)
from lmstack.infer.structured.utf8 import code_point_trie, complement

HANDLED = {"type", "properties", "required", "additionalProperties", "enum", "const", "anyOf",
           "oneOf", "allOf", "$ref", "items", "prefixItems", "minItems", "maxItems", "minLength",
           "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
           "exclusiveMaximum", "$defs", "definitions", "uniqueItems"}
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_BY_TYPE = {"object": {"properties", "required", "additionalProperties"},
            "array": {"items", "prefixItems", "minItems", "maxItems"},
            "string": {"minLength", "maxLength", "pattern", "format"},
            "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}}


@dataclass(frozen=True)
class JsonOptions:
    """How JSON is written: at most `max_whitespace` characters of `whitespace` in each gap
    between structural tokens (None: unbounded)."""

    max_whitespace: int | None = 1
    whitespace: str = " \n"


def json_grammar(options: JsonOptions = JsonOptions()) -> Grammar:
    """Any JSON value (RFC 8259), written as JsonOptions says."""
    return _Builder(True, options).grammar()


def schema_grammar(schema: dict | bool, options: JsonOptions = JsonOptions()) -> Grammar:
    """The grammar of the instances of `schema` we generate (module doc); ConfigError for an
    invalid schema or a keyword we cannot enforce."""
    _check_meta(schema)
    return _Builder(schema, options).grammar()


def _check_meta(schema) -> None:
    """Validate the schema against its meta-schema (jsonschema if installed, else its shape)."""
    if not isinstance(schema, (dict, bool)):
        raise ConfigError(f"a JSON schema is an object or a boolean, not {type(schema).__name__}")
    try:
        import jsonschema  # optional: only checks the schema itself
    except ImportError:
        return
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator) \
            .check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "the top"
        raise ConfigError(f"invalid JSON schema at {where}: {e.message}") from None


class _Builder:
    """Walks the schema; named rules for $ref targets (recursion) and object tails."""

    def __init__(self, root: dict | bool, options: JsonOptions) -> None:
        self.root, self.options = root, options
        self.rules: dict[str, Expr] = {}
        ws = chars([(ord(c), ord(c)) for c in options.whitespace]) if options.whitespace else NOTHING
        self.rules["ws"] = repeat(ws, 0, options.max_whitespace) if options.max_whitespace != 0 \
            else EMPTY
        self.ws = Ref("ws")

    def grammar(self) -> Grammar:
        self.rules["start"] = self.value(self.root, "#")
        return Grammar(self.rules)

    def rule(self, name: str, build) -> Ref:
        """Ref(name), defining the rule by `build()` on first use (a placeholder first, so a
        recursive use inside build() finds it)."""
        if name not in self.rules:
            self.rules[name] = NOTHING
            self.rules[name] = build()
        return Ref(name)

    def value(self, schema, path: str) -> Expr:
        """The expression of `schema` found at `path`."""
        if schema is True or schema == {}:
            return self.rule("any", self.any_value)
        if schema is False:
            return NOTHING
        if not isinstance(schema, dict):
            raise ConfigError(f"the schema at {path} is {schema!r}: expected an object or a boolean")
        for key in schema:
            if key not in HANDLED and key not in ANNOTATIONS:
                raise ConfigError(f"JSON Schema keyword {key!r} (at {path}) is not supported: "
                                  "the output could not be guaranteed to satisfy it")
        if "$ref" in schema:
            return self.reference(schema, path)
        if "allOf" in schema:
            return self.merged(schema, path + "/allOf")
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.branches(schema, key, path)
        if "enum" in schema or "const" in schema:
            return self.enum(schema, path)
        return alt(*(self.typed(t, schema, path) for t in schema_types(schema, path)))

    def branches(self, schema: dict, key: str, path: str) -> Expr:
        """anyOf/oneOf: each branch, merged with the sibling keywords if there are any (a
        branch alone keeps its $ref a rule, so a recursive schema stays finite)."""
        rest = {k: v for k, v in schema.items() if k != key}
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise ConfigError(f"{key} at {path} must be a non-empty list of schemas")
        if not set(rest) - ANNOTATIONS - {"$defs", "definitions"}:
            return alt(*(self.value(b, f"{path}/{key}/{i}") for i, b in enumerate(branches)))
        return alt(*(self.merged({"allOf": [rest, b]}, f"{path}/{key}/{i}")
                     for i, b in enumerate(branches)))

    def merged(self, schema: dict, path: str) -> Expr:
        """`schema` with its allOf merged (schema_merge.py), as a rule named by the merged
        schema: a $ref the merge inlined that leads back here meets the rule, not a new copy."""
        merged = merge_all(schema, self.root, path)
        name = "merged " + json.dumps(merged, sort_keys=True)
        return self.rule(name, lambda: self.value(merged, path))

    def reference(self, schema: dict, path: str) -> Expr:
        """$ref alone: a rule per target (so recursion works); with siblings: merged."""
        ref = schema["$ref"]
        siblings = {k: v for k, v in schema.items() if k not in ANNOTATIONS and k != "$ref"}
        if siblings:
            return self.merged({"allOf": [{"$ref": ref}, siblings]}, path)
        target = resolve_pointer(self.root, ref)
        return self.rule(f"ref {ref}", lambda: self.value(target, ref))

    def enum(self, schema: dict, path: str) -> Expr:
        """enum/const: the listed values (filtered by `type`), each as compact JSON."""
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if "const" in schema and "enum" in schema:
            values = [v for v in schema["enum"] if same_json(v, schema["const"])]
        others = set(schema) - ANNOTATIONS - {"enum", "const", "type", "$defs", "definitions"}
        if others:
            raise ConfigError(f"enum/const at {path} together with {sorted(others)} is not "
                              "supported; list only the allowed values")
        types = schema_types(schema, path) if "type" in schema else TYPES
        return alt(*(self.literal_value(v) for v in values if _json_type(v) in types
                     or (_json_type(v) == "integer" and "number" in types)))

    def literal_value(self, v) -> Expr:
        """One JSON value as written: whitespace gaps as anywhere, a string's characters as in
        a pattern (json_chars), an integral float as its integer (1.0 is 1)."""
        sep = seq(self.ws, literal(b","), self.ws)
        if isinstance(v, str):
            return seq(literal(b'"'), *(json_chars([(ord(c), ord(c))]) for c in v),
                       literal(b'"'))
        if isinstance(v, list):
            body = _join([self.literal_value(x) for x in v], sep)
            return self.bracketed(b"[", body if v else NOTHING, b"]", empty_ok=not v)
        if isinstance(v, dict):
            body = _join([seq(self.key(k), self.literal_value(x)) for k, x in v.items()], sep)
            return self.bracketed(b"{", body if v else NOTHING, b"}", empty_ok=not v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return text(json.dumps(v))

    def typed(self, t: str, schema: dict, path: str) -> Expr:
        """The instances of type t that satisfy the type's keywords in `schema`."""
        if t == "object":
            return self.object(schema, path)
        if t == "array":
            return self.array(schema, path)
        if t == "string":
            return self.string(schema, path)
        if t == "integer":
            return integer_range(*integer_bounds(schema, path))
        if t == "number":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if key in schema:
                    raise ConfigError(f"{key} at {path} is supported for integers only, not "
                                      "for type number")
            return self.rule("number", number_expr)
        return text("null") if t == "null" else alt(text("true"), text("false"))

    def string(self, schema: dict, path: str) -> Expr:
        """minLength/maxLength, or a pattern, or a format (one of the three kinds)."""
        kinds = [k for k in ("pattern", "format") if k in schema]
        lengths = "minLength" in schema or "maxLength" in schema
        if len(kinds) + lengths > 1:
            raise ConfigError(f"the string at {path} combines {kinds + ['length'] * lengths}: "
                              "only one of pattern, format, minLength/maxLength is supported")
        if "pattern" in schema:
            return pattern_string(schema["pattern"])
        if "format" in schema:
            return format_string(schema["format"])
        return string_expr(schema.get("minLength", 0), schema.get("maxLength"))

    def array(self, schema: dict, path: str) -> Expr:
        """[ prefixItems..., items... ] with minItems..maxItems elements."""
        if schema.get("uniqueItems"):
            raise ConfigError(f"uniqueItems at {path} is not supported")
        prefix = schema.get("prefixItems", [])
        items = schema.get("items", "prefixItems" not in schema)
        if isinstance(items, list):  # drafts 4-7: items as a list is prefixItems
            prefix, items = items, False
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        sep = seq(self.ws, literal(b","), self.ws)
        elems = [self.value(p, f"{path}/prefixItems/{i}") for i, p in enumerate(prefix)]
        top = len(elems) if hi is None else min(len(elems), hi)
        bodies = [_join(elems[:n], sep) for n in range(max(lo, 1), top + 1)]  # prefix only
        if items is not False and (hi is None or hi > len(elems)):  # and one item or more
            item = self.value(items, f"{path}/items")
            more_lo = max(lo - len(elems), 1)
            more_hi = None if hi is None else hi - len(elems)
            if elems:
                bodies.append(seq(_join(elems, sep), repeat(seq(sep, item), more_lo, more_hi)))
            else:
                bodies.append(seq(item, repeat(seq(sep, item), more_lo - 1,
                                               None if more_hi is None else more_hi - 1)))
        return self.bracketed(b"[", alt(*bodies), b"]", empty_ok=lo == 0)

    def bracketed(self, open_: bytes, body: Expr, close: bytes, empty_ok: bool) -> Expr:
        """open ws body ws close, or open ws close when `empty_ok` (body is never empty)."""
        full = seq(literal(open_), self.ws, body, self.ws, literal(close))
        return alt(seq(literal(open_), self.ws, literal(close)), full) if empty_ok else full

    def object(self, schema: dict, path: str) -> Expr:
        """{ declared properties in order (required mandatory), then extras if allowed }."""
        props = dict(schema.get("properties", {}))
        required = schema.get("required", [])
        explicit = schema.get("additionalProperties")
        for name in required:  # required but not declared: any value (or the extras' schema)
            props.setdefault(name, True if explicit is None else explicit)
        extra = explicit if explicit is not None else not ("properties" in schema
                                                           or "required" in schema)
        sep = seq(self.ws, literal(b","), self.ws)
        members = [(seq(self.key(name), self.value(s, f"{path}/properties/{name}")),
                    name in required) for name, s in props.items()]
        if extra is not False:
            key = seq(literal(b'"'), _not_in(list(props)), literal(b'"')) if props \
                else self.rule("string", string_expr)
            one = seq(key, self.ws, literal(b":"), self.ws,
                      self.value(extra, f"{path}/additionalProperties"))
            members.append((seq(one, repeat(seq(sep, one), 0, None)), False))
        return self.object_body(members, sep)

    def key(self, name: str) -> Expr:
        """`"name"` then the ':' gap."""
        return seq(literal(b'"'), *(json_chars([(ord(c), ord(c))]) for c in name),
                   literal(b'"'), self.ws, literal(b":"), self.ws)

    def object_body(self, members: list[tuple[Expr, bool]], sep: Expr) -> Expr:
        """Members in order joined by commas, optional ones skippable: built from the end,
        `after` is the rest once something was written (a comma first), `first` the rest
        when nothing was written yet and at least one member comes."""
        after: Expr = EMPTY
        first: Expr = NOTHING
        for member, required in reversed(members):
            with_after, with_first = seq(sep, member, after), seq(member, after)
            if required:
                after, first = with_after, with_first
            else:
                after, first = alt(with_after, after), alt(with_first, first)
        empty_ok = not any(required for _, required in members)
        return self.bracketed(b"{", first, b"}", empty_ok)

    def any_value(self) -> Expr:
        """Any JSON value."""
        value = Ref("any")
        sep = seq(self.ws, literal(b","), self.ws)
        string = self.rule("string", string_expr)
        member = seq(string, self.ws, literal(b":"), self.ws, value)
        obj = self.bracketed(b"{", seq(member, repeat(seq(sep, member), 0, None)), b"}", True)
        arr = self.bracketed(b"[", seq(value, repeat(seq(sep, value), 0, None)), b"]", True)
        return alt(obj, arr, string, self.rule("number", number_expr), text("true"),
                   text("false"), text("null"))


def _join(items: list[Expr], sep: Expr) -> Expr:
    """items with sep between them."""
    out: list[Expr] = []
    for i, item in enumerate(items):
        out += [sep, item] if i else [item]
    return seq(*out)


_ANY_JSON_CHAR = json_chars([(0, 0x10FFFF)])


def _not_in(names: list[str]) -> Expr:
    """The characters of a JSON string (written one way) that spell none of `names`: below each
    node of the names' trie, stop where no name ends, or take a child, or leave the trie."""
    trie = code_point_trie(names)

    def below(node: dict) -> Expr:
        kids = [c for c in node if c is not None]
        parts = [] if None in node else [EMPTY]
        parts += [seq(json_chars([(c, c)]), below(node[c])) for c in kids]
        parts.append(seq(json_chars(complement([(c, c) for c in kids])),
                         repeat(_ANY_JSON_CHAR, 0, None)))
        return alt(*parts)
    return below(trie)


def schema_types(schema: dict, path: str) -> list[str]:
    """The types to generate: `type` (one or a list), else those whose keywords appear, else all."""
    if "type" in schema:
        given = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        bad = [t for t in given if t not in TYPES]
        if bad:
            raise ConfigError(f"unknown JSON Schema type {bad[0]!r} at {path}; use one of "
                              f"{', '.join(TYPES)}")
        return [t for t in TYPES if t in given]
    implied = [t for t in TYPES if _BY_TYPE.get(t, set()) & set(schema)]
    return implied or list(TYPES)


def integer_bounds(schema: dict, path: str) -> tuple[int | None, int | None]:
    """[lo, hi] of an integer from minimum/maximum/exclusiveMinimum/exclusiveMaximum."""
    lo = hi = None
    for key, bound in (("minimum", math.ceil), ("exclusiveMinimum", lambda v: math.floor(v) + 1),
                       ("maximum", math.floor), ("exclusiveMaximum", lambda v: math.ceil(v) - 1)):
        if key not in schema:
            continue
        v = schema[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key} at {path} must be a finite number, not {v!r}")
        b = bound(v)
        if key.endswith("inimum"):
            lo = b if lo is None else max(lo, b)
        else:
            hi = b if hi is None else min(hi, b)
    return lo, hi


def _json_type(v) -> str:
    """The JSON Schema type of a Python value read from JSON."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int) or isinstance(v, float) and v.is_integer():
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}[type(v)]
