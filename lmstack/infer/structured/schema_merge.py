"""allOf merged into one schema, keyword by keyword, and $ref pointers resolved.

JSON Schema 2020-12 (Core, section 10.2.1.1): an instance satisfies allOf when it satisfies
every subschema. Where that conjunction can be written as one schema exactly, we write it:
types intersect (integer is a number), properties unite (a shared property gets allOf of both),
required unites, lower bounds take the largest and upper bounds the smallest, enum intersects,
equal values stay. Anything else (two different patterns, two anyOf, additionalProperties false
beside a property it does not declare, ...) is a ConfigError naming the keyword: we never
generate for a looser schema than the one given. A $ref inside allOf is inlined (its own
nested $refs stay references, so recursive definitions still work).

    >>> merge_all({"allOf": [{"type": ["integer", "string"], "minimum": 1},
    ...                      {"type": "number", "minimum": 3}]}, {}, "#")
    {'type': ['integer'], 'minimum': 3}
    >>> resolve_pointer({"$defs": {"a~b": {"type": "null"}}}, "#/$defs/a~0b")
    {'type': 'null'}

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/schema_merge.py
"""

from __future__ import annotations

import json
from urllib.parse import unquote

from lmstack.errors import ConfigError

ANNOTATIONS = {"title", "description", "examples", "default", "$schema", "$id", "$comment",
               "deprecated", "readOnly", "writeOnly"}
_LOWER = {"minimum", "exclusiveMinimum", "minLength", "minItems"}
_UPPER = {"maximum", "exclusiveMaximum", "maxLength", "maxItems"}
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


def resolve_pointer(root, ref: str):
    """The subschema `ref` ("#" or "#/a/b", RFC 6901 escapes) points to in `root`."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise ConfigError(f"$ref {ref!r} is not supported: only references into the same "
                          "document ('#/$defs/name') are")
    node = root
    for part in filter(None, unquote(ref[1:]).split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ConfigError(f"$ref {ref!r} points to nothing in the schema")
    return node


def merge_all(schema: dict, root, path: str):
    """`schema` with its allOf (and any $ref among the parts) merged in; False if a part is."""
    parts = [{k: v for k, v in schema.items() if k != "allOf"}] + list(schema.get("allOf", []))
    merged: dict = {}
    for part in parts:
        part = _inline(part, root, path)
        if part is False:
            return False
        if part is True:
            continue
        if "allOf" in part:
            part = merge_all(part, root, path)
            if part is False:
                return False
        merged = _merge_two(merged, part, path)
    return merged


def _inline(part, root, path: str, depth: int = 0):
    """A part with its top-level $ref replaced by the target merged with the siblings."""
    if not isinstance(part, dict) or "$ref" not in part:
        return part
    if depth > 32:
        raise ConfigError(f"allOf at {path}: $ref chain too deep (a $ref cycle with no content)")
    target = _inline(resolve_pointer(root, part["$ref"]), root, path, depth + 1)
    rest = {k: v for k, v in part.items() if k != "$ref"}
    if target is False:
        return False
    return rest if target is True else _merge_two(dict(target), rest, path)


def _merge_two(a: dict, b: dict, path: str) -> dict:
    """The one schema equal to a and b together; ConfigError where that is not exact."""
    out = dict(a)
    for key, vb in b.items():
        if key in ANNOTATIONS or key in ("$defs", "definitions"):
            continue
        if key not in out:
            out[key] = vb
            continue
        va = out[key]
        if key == "type":
            out[key] = _intersect_types(va, vb)
        elif key == "properties":
            out[key] = {**va, **{k: ({"allOf": [va[k], v]} if k in va and not same_json(va[k], v)
                                     else v) for k, v in vb.items()}}
        elif key == "required":
            out[key] = list(dict.fromkeys(list(va) + list(vb)))
        elif key in _LOWER or key in _UPPER:
            out[key] = max(va, vb) if key in _LOWER else min(va, vb)
        elif key == "enum":
            out[key] = [v for v in va if any(same_json(v, w) for w in vb)]
        elif key in ("items", "additionalProperties") and isinstance(va, dict) \
                and isinstance(vb, dict) and not same_json(va, vb):
            out[key] = {"allOf": [va, vb]}
        elif not same_json(va, vb):
            raise ConfigError(f"allOf at {path}: cannot merge the two different values of "
                              f"{key!r} ({json.dumps(va)} and {json.dumps(vb)}) into one schema")
    _check_closed(a, b, path)
    _check_closed(b, a, path)
    return out


def _check_closed(closed: dict, other: dict, path: str) -> None:
    """additionalProperties false in one part forbids the other's undeclared properties."""
    if closed.get("additionalProperties", True) is not False:
        return
    extra = set(other.get("properties", {})) - set(closed.get("properties", {}))
    if extra:
        raise ConfigError(f"allOf at {path}: additionalProperties false in one part excludes "
                          f"properties of another ({sorted(extra)}); list them all in one part")


def _intersect_types(a, b) -> list[str]:
    """Types in both (an integer is a number)."""
    sa, sb = set(a if isinstance(a, list) else [a]), set(b if isinstance(b, list) else [b])
    both = sa & sb
    if "integer" in sa and "number" in sb or "integer" in sb and "number" in sa:
        both.add("integer")
    return [t for t in _TYPES if t in both]


def same_json(a, b) -> bool:
    """Equal as JSON values (true is not 1)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
