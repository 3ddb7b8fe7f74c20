"""Function calling (OpenAI's `tools` and `tool_choice`) as constrained decoding: the model's
reply is JSON under a schema built from the tools, so a call always parses and its arguments
always fit the function's parameter schema.

What the reply is, by `tool_choice`:

- a named function (`{"type": "function", "function": {"name": N}}`): the arguments of N,
  under N's `parameters` schema;
- "required": `{"name": ..., "arguments": {...}}`, one object per tool in an anyOf (the name a
  const, the arguments under that tool's schema);
- "auto" (the default when tools are given): either such a call or `{"content": "..."}`, the
  model's answer in words; the reply's message is then that text. One JSON document keeps both
  outcomes inside one language, so "auto" is as strict as "required";
- "none": the tools are not offered; a plain reply.

One call per reply (`parallel_tool_calls` is taken as false). The model learns about the tools
from its chat template when the template reads `tools` (Qwen2.5's, Llama 3.1's do), else from a
system message this module writes (`tools_message`); a conversation that sends back the
assistant's `tool_calls` and the `tool` results renders them as text for such templates.

    >>> plan = ToolPlan.of([{"type": "function", "function": {"name": "add", "parameters":
    ...     {"type": "object", "properties": {"a": {"type": "integer"}}}}}], "required")
    >>> plan.schema()["anyOf"][0]["properties"]["name"]
    {'const': 'add'}
    >>> plan.reply('{"name": "add", "arguments": {"a": 2}}')[1][0]["function"]
    {'name': 'add', 'arguments': '{"a": 2}'}
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

ANY_OBJECT: dict = {"type": "object"}


@dataclass(frozen=True)
class ToolPlan:
    """The tools offered and what the reply must be: `forced` names the function that must be
    called, else `required` says whether a call is required (auto: a call or content)."""

    tools: tuple[dict, ...]     # each {"name", "description", "parameters"}
    forced: str | None = None
    required: bool = False

    @classmethod
    def of(cls, tools: list[Any] | None, choice: Any) -> ToolPlan | None:
        """The plan of a request's `tools` (dicts or protocol models) and `tool_choice`; None
        when it calls nothing. ValueError for a named function that is not among the tools."""
        functions = [_function(t) for t in tools or []]
        if not functions or choice == "none":
            return None
        choice = choice.model_dump() if hasattr(choice, "model_dump") else choice
        forced = choice["function"]["name"] if isinstance(choice, dict) else None
        names = [f["name"] for f in functions]
        if forced is not None and forced not in names:
            raise ValueError(f"tool_choice names the function {forced!r}, which is not in tools "
                             f"({', '.join(names)})")
        return cls(tuple(functions), forced, choice == "required")

    def schema(self) -> dict:
        """The JSON Schema of the reply."""
        if self.forced is not None:
            return self._parameters(self.forced)
        calls = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                                   "arguments": self._parameters(f["name"])},
                  "required": ["name", "arguments"], "additionalProperties": False}
                 for f in self.tools]
        if not self.required:
            calls.append({"type": "object", "properties": {"content": {"type": "string"}},
                          "required": ["content"], "additionalProperties": False})
        return {"anyOf": calls}

    def _parameters(self, name: str) -> dict:
        found = next(f for f in self.tools if f["name"] == name)
        return found.get("parameters") or ANY_OBJECT

    def reply(self, text: str) -> tuple[str | None, list[dict] | None]:
        """(content, tool_calls) of a complete reply's text, in OpenAI's message shape."""
        value = json.loads(text)
        if self.forced is not None:
            return None, [_call(self.forced, value)]
        if "content" in value and "name" not in value:
            return value["content"], None
        return None, [_call(value["name"], value["arguments"])]

    def message(self) -> str:
        """The system text that offers the tools to a model whose template cannot."""
        listed = json.dumps([{"name": f["name"], "description": f.get("description") or "",
                              "parameters": f.get("parameters") or ANY_OBJECT}
                             for f in self.tools], ensure_ascii=False)
        if self.forced is not None:
            how = f'Reply with the JSON arguments of the function "{self.forced}".'
        else:
            how = 'To call a function, reply with JSON: {"name": ..., "arguments": {...}}.'
            if not self.required:
                how += ' To answer in words instead, reply with JSON: {"content": "..."}.'
        return f"You can call these functions (JSON Schema of their arguments):\n{listed}\n{how}"


def _function(tool: Any) -> dict:
    tool = tool.model_dump() if hasattr(tool, "model_dump") else tool
    f = tool["function"]
    return {"name": f["name"], "description": f.get("description"), "parameters": f.get("parameters")}


def _call(name: str, arguments: Any) -> dict:
    """One entry of a message's `tool_calls`; the arguments as JSON text, as OpenAI sends them."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def offer(messages: list[dict], plan: ToolPlan, template_reads_tools: bool) -> list[dict]:
    """The conversation with the tools offered in a system message (unless the chat template
    renders `tools` itself), and earlier calls and results written as text for templates
    that would drop them."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls") and not m.get("content"):
            calls = [{"name": c["function"]["name"],
                      "arguments": json.loads(c["function"].get("arguments") or "{}")}
                     for c in m["tool_calls"]]
            m = {**m, "content": json.dumps(calls[0] if len(calls) == 1 else calls)}
        out.append(m)
    if template_reads_tools:
        return out
    text = plan.message()
    if out and out[0].get("role") == "system":
        return [{**out[0], "content": f"{out[0]['content']}\n\n{text}"}, *out[1:]]
    return [{"role": "system", "content": text}, *out]
