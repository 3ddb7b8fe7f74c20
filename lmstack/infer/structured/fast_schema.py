"""A JSON Schema rewritten for llguidance so that it generates what the reference engine does.

The reference engine (json_schema.py) generates a subset of a schema's instances, chosen so
that every output is valid; llguidance, left to itself, generates a slightly different subset.
`for_llguidance(schema)` rewrites the schema, node by node, into one that llguidance reads as
the same language, so that the two engines give identical masks (tests/infer/structured/
test_engines_agree.py). Every rewrite keeps the schema's meaning or narrows it as the reference
does, so what llguidance generates stays valid for the schema as given:

- allOf is merged into one schema (schema_merge.py), and so are a $ref with sibling keywords
  and an anyOf/oneOf branch with the keywords beside it; where the merge is not exact the node
  stays as written (the reference refuses such a schema).
- A node without `type` gets the types its keywords imply (`properties`: object, `minimum`:
  integer, ...), as the reference generates only those.
- An object that lists properties or required and leaves additionalProperties out is closed
  (OpenAI's strict mode; `"additionalProperties": true` opens it), and so is an array with
  prefixItems and no items.
- `pattern` and `format` become one full-match `pattern` printed from the reference's own
  reading (rust_regex.py; formats from json_lexemes.FORMATS).
- An integer whose range holds 0 and negatives, or no bound, becomes the anyOf of its negative
  and non-negative halves: llguidance would also allow `-0` there, which the reference (one
  spelling per integer) does not.

    >>> for_llguidance({"properties": {"n": {"type": "integer", "minimum": -5, "maximum": 5}}})
    {'properties': {'n': {'anyOf': [{'type': 'integer', 'minimum': -5, 'maximum': -1}, \
{'type': 'integer', 'minimum': 0, 'maximum': 5}]}}, 'type': 'object', 'additionalProperties': False}
    >>> for_llguidance({"allOf": [{"required": ["a"]}, {"properties": {"b": {"const": 1}}}]})
    {'required': ['a'], 'properties': {'b': {'const': 1}}, 'type': 'object', \
'additionalProperties': False}

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/fast_schema.py
"""

from __future__ import annotations

from typing import Any

from lmstack.errors import ConfigError
from lmstack.infer.structured.json_lexemes import FORMATS
from lmstack.infer.structured.json_schema import TYPES, integer_bounds, schema_types
from lmstack.infer.structured.rust_regex import not_in_regex, rust_regex
from lmstack.infer.structured.schema_merge import ANNOTATIONS, merge_all

_SUBSCHEMA = ("additionalProperties", "items", "not", "contains", "propertyNames")
_SUBSCHEMAS = ("anyOf", "oneOf", "prefixItems", "allOf")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_NOT_TYPED = ("enum", "const", "anyOf", "oneOf", "allOf", "$ref", "not")


def for_llguidance(schema: Any, root: Any = None) -> Any:
    """`schema` (a node of the document `root`) rewritten as the module doc says."""
    if not isinstance(schema, dict):
        return schema
    root = schema if root is None else root
    node = _merged(schema, root)
    if not isinstance(node, dict):  # a merge that no instance satisfies
        return node
    for key in _SUBSCHEMA:
        if isinstance(node.get(key), dict):
            node[key] = for_llguidance(node[key], root)
    for key in _SUBSCHEMAS:
        if isinstance(node.get(key), list):
            node[key] = [for_llguidance(s, root) for s in node[key]]
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            node[key] = {k: for_llguidance(s, root) for k, s in node[key].items()}
    if not any(key in node for key in _NOT_TYPED):
        types = list(TYPES) if "type" in node else schema_types(node, "#")
        if types != list(TYPES):
            node["type"] = types[0] if len(types) == 1 else types
        _one_pattern(node)
        _close(node)
        if "prefixItems" in node and "items" not in node:  # no more items, as the reference
            node["items"] = False
        return _without_negative_zero(node)
    return node


def _merged(schema: dict, root: Any) -> dict:
    """A copy of `schema` with allOf, $ref siblings and anyOf/oneOf siblings merged as the
    reference merges them; the node as written where a merge is not exact."""
    keep = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
    rest = {k: v for k, v in schema.items() if k not in ANNOTATIONS and k not in keep}
    try:
        if "$ref" in rest and len(rest) > 1:
            siblings = {k: v for k, v in rest.items() if k != "$ref"}
            merged = merge_all({"allOf": [{"$ref": rest["$ref"]}, siblings]}, root, "#")
        elif "allOf" in rest:
            merged = merge_all(rest, root, "#")
        else:
            for key in ("anyOf", "oneOf"):
                others = {k: v for k, v in rest.items() if k != key}
                if isinstance(rest.get(key), list) and others:
                    return {**keep, "anyOf": [merge_all({"allOf": [others, b]}, root, "#")
                                              for b in rest[key]]}
            return dict(schema)
    except ConfigError:
        return dict(schema)
    return merged if merged is False else {**keep, **merged}


def _one_pattern(node: dict) -> None:
    """`format` (one of ours) or `pattern` as one full-match pattern in Rust syntax."""
    try:
        if "format" in node and "pattern" not in node and node["format"] in FORMATS:
            node["pattern"] = "^" + rust_regex(FORMATS[node.pop("format")]) + "$"
        elif "pattern" in node and "format" not in node:
            node["pattern"] = "^" + rust_regex(node["pattern"], search=True) + "$"
    except ConfigError:
        pass  # a pattern the reference refuses: llguidance reads it as written


def _close(node: dict) -> None:
    """additionalProperties false where properties or required are listed and it is absent;
    extra keys beside declared ones as a pattern that spells none of them (the reference's
    reading: llguidance alone would let an escape spell a declared name, `"\\u0061"` for a)."""
    if "patternProperties" in node:
        return
    extra = node.get("additionalProperties")
    if extra is None and ("properties" in node or "required" in node):
        node["additionalProperties"] = False
    elif extra is not False and extra is not None and node.get("properties"):
        extra = {} if extra is True else extra
        undeclared = [k for k in node.get("required", []) if k not in node["properties"]]
        node["properties"] = {**node["properties"], **{k: extra for k in undeclared}}
        node["patternProperties"] = {"^" + not_in_regex(list(node["properties"])) + "$": extra}
        node["additionalProperties"] = False


def _without_negative_zero(node: dict) -> dict:
    """An integer range that llguidance would let start with -0, split at 0 (module doc)."""
    types = node.get("type", list(TYPES))
    types = types if isinstance(types, list) else [types]
    if "integer" not in types or "number" in types:
        return node
    try:
        lo, hi = integer_bounds(node, "#")
    except ConfigError:
        return node
    if not ((lo is None and hi is None) or (lo is not None and hi is not None and lo < 0 <= hi)):
        return node
    negative = {"type": "integer", **({} if lo is None else {"minimum": lo}), "maximum": -1}
    natural = {"type": "integer", "minimum": 0, **({} if hi is None else {"maximum": hi})}
    others = [t for t in types if t != "integer"]
    keep = {k: node[k] for k in ("$defs", "definitions") if k in node}  # where $refs point
    rest = {k: v for k, v in node.items() if k not in _BOUNDS and k != "type" and k not in keep}
    return {**keep, "anyOf": [*([{**rest, "type": others}] if others else []), negative,
                              natural]}
