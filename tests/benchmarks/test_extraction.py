"""benchmarks/extraction.py: the data set is right and the scoring is right (no model run)."""

from __future__ import annotations

import json

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from tests.benchmarks import load

bench = load("extraction")
SCHEMAS = bench.load_schemas()
EXAMPLES = bench.load_examples()
PERSON = SCHEMAS["person"]
GOLD = {"name": "Maria Lopez", "age": 34, "city": "Madrid", "email": None, "employed": True}


def test_thirty_examples_over_three_schemas():
    assert len(EXAMPLES) == 30
    assert len({ex.id for ex in EXAMPLES}) == 30
    assert {ex.schema for ex in EXAMPLES} == set(SCHEMAS) == {"person", "order", "event"}
    assert {ex.difficulty for ex in EXAMPLES} == {"easy", "medium", "hard"}
    assert all(ex.text.strip() for ex in EXAMPLES)


def test_every_gold_object_validates_and_has_every_key():
    for name, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert set(schema["required"]) == set(schema["properties"]), name
    for ex in EXAMPLES:
        schema = SCHEMAS[ex.schema]
        assert bench.validation_errors(ex.gold, schema) == [], ex.id
        assert list(ex.gold) == list(schema["properties"]), ex.id


def test_the_validator_refuses_a_wrong_type():  # negative control of the test above
    assert bench.validation_errors({**GOLD, "age": "34"}, PERSON)
    assert bench.validation_errors({**GOLD, "extra": 1}, PERSON)


def test_instruction_names_every_key_and_the_text():
    message = bench.instruction(SCHEMAS["event"], "Jazz Night is a concert.")
    for key in SCHEMAS["event"]["properties"]:
        assert f"- {key} (" in message
    assert '"conference", "concert"' in message and message.endswith("Text: Jazz Night is a concert.")


def test_score_a_fenced_correct_reply():
    reply = "```json\n" + json.dumps({**GOLD, "name": "maria  LOPEZ"}, indent=2) + "\n```"
    s = bench.score(reply, PERSON, GOLD)
    assert s.parsed and s.valid and s.lenient_valid and all(s.fields.values())


def test_score_a_reply_with_chatter_and_a_wrong_type():
    reply = 'Here it is: {"name": "Maria Lopez", "age": "34", "city": "Madrid", ' \
            '"email": null, "employed": true} Hope this helps!'
    s = bench.score(reply, PERSON, GOLD)
    assert not s.parsed and not s.valid and s.errors == ["does not parse"]
    assert not any(s.fields.values())                  # strict: nothing parsed, all wrong
    assert s.lenient_parsed and not s.lenient_valid    # "34" is a string
    assert s.lenient_fields == {"name": True, "age": False, "city": True, "email": True,
                                "employed": True}


def test_score_a_truncated_reply():
    s = bench.score('{"name": "Maria Lopez", "age": 3', PERSON, GOLD)
    assert not s.parsed and not s.lenient_parsed and not any(s.lenient_fields.values())


def test_field_matches_types_and_numbers():
    gold = {"n": 12, "p": 15.5, "b": False, "z": None}
    assert bench.field_matches({"n": 12.0, "p": 15.50, "b": False, "z": None}, gold) == \
        dict.fromkeys(gold, True)
    assert bench.field_matches({"n": "12", "p": 15.49, "b": 0, "z": "null"}, gold) == \
        dict.fromkeys(gold, False)
    assert bench.field_matches(None, gold) == dict.fromkeys(gold, False)


def test_summarize_two_records():
    good = {"parsed": True, "valid": True, "lenient_parsed": True, "lenient_valid": True,
            "fields": {"a": True, "b": True}, "lenient_fields": {"a": True, "b": True},
            "tokens": 10, "seconds": 1.0, "finish_reason": "stop"}
    bad = {**good, "parsed": False, "valid": False, "fields": {"a": False, "b": False},
           "tokens": 30, "seconds": 1.0, "finish_reason": "length"}
    s = bench.summarize([good, bad])
    assert (s["parse"], s["valid"], s["lenient_parse"], s["field_acc"], s["lenient_field_acc"]) \
        == (0.5, 0.5, 1.0, 0.5, 1.0)
    assert (s["exact"], s["tokens"], s["tok_s"], s["length_cut"]) == (0.5, 20, 20, 1)


values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))


@given(st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=6))
def test_gold_matches_itself_and_its_json_round_trip(gold):
    assert all(bench.field_matches(gold, gold).values())
    assert all(bench.field_matches(json.loads(json.dumps(gold)), gold).values())
