"""Structured output through the server, spoken to with the official `openai` client:
`response_format` (json_object, json_schema) on chat and completions, function calling
(`tools` with tool_choice named, "required" and "auto", streaming too), the client's
`parse` with a pydantic model, and bad constraints as 400s that name the field. The model is a
random tiny GPT: whatever it prefers, the replies parse and fit."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from .conftest import serve, tiny_engine

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "integer", "minimum": 0,
                                                                   "maximum": 9}},
        "required": ["a", "b"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def live_server(tok):
    with serve(tiny_engine(tok, block_size=1024)) as server:  # room for the tools' system text
        yield server


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused")


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


@pytest.mark.parametrize("seed", [0, 1])
def test_chat_and_completions_follow_a_json_schema(client, seed):
    chat = client.chat.completions.create(model="tiny", messages=ASK, seed=seed, max_tokens=60,
                                          response_format=schema_format(PERSON))
    jsonschema.validate(json.loads(chat.choices[0].message.content), PERSON)
    assert chat.choices[0].finish_reason == "stop"
    text = client.completions.create(model="tiny", prompt="Person:", seed=seed, max_tokens=60,
                                     extra_body={"response_format": schema_format(PERSON)})
    jsonschema.validate(json.loads(text.choices[0].text), PERSON)
    obj = client.chat.completions.create(model="tiny", messages=ASK, seed=seed, max_tokens=80,
                                         response_format={"type": "json_object"})
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_parse_with_a_pydantic_model(client):
    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=8)
        age: int = pydantic.Field(ge=0, le=99)

    done = client.chat.completions.parse(model="tiny", messages=ASK, response_format=Person,
                                         max_tokens=60, seed=0)
    person = done.choices[0].message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 99


def arguments(call, tool) -> dict:
    value = json.loads(call.function.arguments)
    jsonschema.validate(value, tool["function"]["parameters"])
    return value


def test_a_named_function_is_called_with_valid_arguments(client):
    done = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER, ADD], max_tokens=60, seed=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    arguments(call, WEATHER)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_required_and_auto(client, seed):
    done = client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, ADD],
                                          tool_choice="required", max_tokens=80, seed=seed)
    (call,) = done.choices[0].message.tool_calls
    arguments(call, {"get_weather": WEATHER, "add": ADD}[call.function.name])
    auto = client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, ADD],
                                          max_tokens=80, seed=seed)
    message = auto.choices[0].message
    if auto.choices[0].finish_reason == "tool_calls":
        arguments(message.tool_calls[0], {"get_weather": WEATHER, "add": ADD}[message.tool_calls[0].function.name])
    else:  # an answer in words, or cut short by max_tokens
        assert isinstance(message.content, str) and not message.tool_calls


def test_streamed_tool_calls_add_up_to_the_call(client):
    kwargs = dict(model="tiny", messages=ASK, tools=[WEATHER], max_tokens=60, seed=3,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    name, args, reasons = None, "", []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for call in choice.delta.tool_calls or []:
                name = call.function.name or name
                args += call.function.arguments or ""
    assert (name, args) == (whole.function.name, whole.function.arguments)
    assert reasons[-1] == "tool_calls"


def test_a_conversation_with_calls_and_results_renders(client):
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    done = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER],
                                          tool_choice="none", max_tokens=5)
    assert isinstance(done.choices[0].message.content, str)


@pytest.mark.parametrize("extra, param, words", [
    ({"response_format": schema_format({"type": "strnig"})}, "response_format", "schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    ({"guided_regex": "a("}, "guided_regex", "regex"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "nope"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format", "two constraints"),
    ({"tool_choice": "required"}, "tool_choice", "no tools"),
])
def test_bad_constraints_are_400s_naming_the_field(live_server, extra, param, words):
    r = httpx.post(live_server.url + "/v1/chat/completions",
                   json={"messages": ASK, "max_tokens": 5, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert httpx.get(live_server.url + "/health").status_code == 200  # and it keeps serving


def test_concurrent_requests_under_different_constraints_share_batches(client):
    from concurrent.futures import ThreadPoolExecutor

    formats = [("regex", r"[0-9]{3}-[0-9]{4}"), ("choice", ["red", "green", "blue"]),
               ("schema", PERSON), ("free", None)] * 3

    def ask(kind_value):
        kind, value = kind_value
        extra = {"regex": {"guided_regex": value}, "choice": {"guided_choice": value},
                 "schema": {"response_format": schema_format(value)}, "free": {}}[kind]
        done = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=40,
                                              temperature=1.0, seed=7, extra_body=extra)
        return kind, value, done.choices[0]

    with ThreadPoolExecutor(len(formats)) as pool:
        for kind, value, choice in pool.map(ask, formats):
            text = choice.message.content
            if kind == "regex":
                assert re.fullmatch(value, text), text
            elif kind == "choice":
                assert text in value
            elif kind == "schema":
                jsonschema.validate(json.loads(text), PERSON)
