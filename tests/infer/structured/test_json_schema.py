"""JSON and JSON Schema as grammars (json_schema.py, json_lexemes.py, schema_merge.py).

    .venv/bin/python -m pytest -q tests/infer/structured/test_json_schema.py
"""

import json
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.infer.structured.earley import EarleyRecognizer
from lmstack.infer.structured.json_schema import (
    JsonOptions,
    json_grammar,
    schema_grammar,
)
from lmstack.infer.structured.recognizer import matches

from .sentences import sentence

jsonschema = pytest.importorskip("jsonschema")

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_json_dumps_output_is_in_the_json_grammar(value):
    r = EarleyRecognizer(json_grammar().lower())
    compact = json.dumps(value, separators=(",", ":"))
    assert matches(r, compact.encode()) and matches(r, json.dumps(value).encode())
    raw = json.dumps(value, ensure_ascii=False)
    assert matches(r, raw.encode()) == ("\x7f" not in raw)  # DEL is never written raw
    spaced = json.dumps(value, indent=2)
    assert matches(r, spaced.encode()) == ("\n  " not in spaced and "\n " not in spaced)
    r2 = EarleyRecognizer(json_grammar(JsonOptions(max_whitespace=None)).lower())
    assert matches(r2, spaced.encode())


def test_every_sentence_of_the_json_grammar_parses():
    bnf = json_grammar().lower()
    rng = random.Random(1)
    for _ in range(300):
        s = sentence(bnf, rng, budget=40)
        json.loads(s.decode())  # raises if not JSON


def test_whitespace_is_bounded():
    r = EarleyRecognizer(json_grammar().lower())
    assert matches(r, b'{"a": 1,\n"b": [1, 2]}') and not matches(r, b'{"a":  1}')
    assert not matches(r, b' {}') and not matches(r, b'{}\n')
    r0 = EarleyRecognizer(json_grammar(JsonOptions(max_whitespace=0)).lower())
    assert matches(r0, b'{"a":1}') and not matches(r0, b'{"a": 1}')


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 8},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 130},
                                      "email": {"type": "string", "format": "email"}},
     "required": ["name", "age"]},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}], "minItems": 1},
    {"enum": ["red", "green", 3, None, {"a": [1]}]},
    {"const": "fixed"},
    {"anyOf": [{"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"}, {"type": "integer",
                                                                   "exclusiveMinimum": 5}]},
    {"oneOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]},
    {"type": ["string", "integer"], "maxLength": 2, "maximum": -7},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
               {"properties": {"a": {"minimum": 10}, "b": {"type": "string"}}}]},
    {"$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"},
                                           "maxItems": 2}}, "required": ["v"]}},
     "$ref": "#/$defs/node"},
    {"type": "object", "properties": {"id": {"type": "integer"}},
     "additionalProperties": {"type": "boolean"}},
    {"type": "object", "additionalProperties": {"type": "string", "format": "date"}},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                      "note": {"type": "string", "pattern": "a\"b"}}},
    {"type": "string", "pattern": "^(?:\\\\|\\n|[^a-z])+$"},
    {"type": "integer", "minimum": -1234, "maximum": 98765},
    True,
    {"title": "anything", "description": "an annotated any value"},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=[str(i) for i in range(len(SCHEMAS))])
def test_every_sentence_of_a_schema_grammar_validates(schema):
    bnf = schema_grammar(schema).lower()
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    rng = random.Random(2)
    seen = set()
    for _ in range(150):
        s = sentence(bnf, rng, budget=50).decode()
        validator.validate(json.loads(s))
        seen.add(s)
    assert len(seen) > 1 or schema == {"const": "fixed"}


def test_schema_examples():
    r = EarleyRecognizer(schema_grammar(SCHEMAS[0]).lower())
    good = [b'{"name":"al","age":3}', b'{"name": "al", "age": 130, "email": "a.b@c.io"}']
    bad = [b'{"age":3,"name":"al"}', b'{"name":"","age":3}', b'{"name":"al","age":131}',
           b'{"name":"al","age":3,"extra":1}', b'{"name":"al","age":3,"email":"nope"}',
           b'{"name":"al","age":03}']
    assert all(matches(r, g) for g in good) and not any(matches(r, b) for b in bad)
    extra = EarleyRecognizer(schema_grammar(SCHEMAS[10]).lower())
    assert matches(extra, b'{"id":1,"x":true}') and matches(extra, b'{"ix":false}')
    assert not matches(extra, b'{"id":1,"id":true}') and not matches(extra, b'{"x":1}')


@pytest.mark.parametrize("schema, words", [
    ({"type": 5}, "invalid JSON schema"),
    ({"type": "integer", "multipleOf": 3}, "keyword 'multipleOf' (at #) is not supported"),
    ({"properties": {"a": {"not": {}}}}, "keyword 'not' (at #/properties/a)"),
    ({"type": "object", "patternProperties": {"x": {}}}, "'patternProperties'"),
    ({"type": "string", "pattern": "(a"}, "'(a'"),
    ({"type": "string", "pattern": "(?=a)"}, "lookaround"),
    ({"type": "string", "format": "hostname"}, "format 'hostname' is not supported"),
    ({"$ref": "#/$defs/nope"}, "points to nothing"),
    ({"$ref": "http://example.com/s.json"}, "only references into the same document"),
    ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "empty"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "empty"),
    ({"enum": []}, "empty"),
    ({"enum": [1, 2], "minimum": 2}, "enum/const at # together with ['minimum']"),
    ({"type": "number", "minimum": 0}, "minimum at # is supported for integers only"),
    ({"allOf": [{"pattern": "a"}, {"pattern": "b"}]}, "cannot merge the two different values of 'pattern'"),
    ({"allOf": [{"properties": {"a": {}}, "additionalProperties": False},
                {"properties": {"b": {}}}]}, "additionalProperties false"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "string", "pattern": "a", "maxLength": 3}, "only one of pattern"),
    ("not a schema", "a JSON schema is an object or a boolean"),
])
def test_bad_schemas_are_config_errors(schema, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        schema_grammar(schema).lower()
