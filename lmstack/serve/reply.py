"""A request's reply in OpenAI's shapes: its samples' events collected into the final
`text_completion` / `chat.completion` response, or turned into server-sent-event chunks as they
arrive (chat streams open with the assistant role; usage last when asked for). The logprobs
spellings are protocol.py's. A function-calling reply (tools.py) is JSON until it is complete,
so it is held back and sent as one delta at the end: `tool_calls` (finish_reason
"tool_calls") or the content of an "auto" answer in words. Best-of-N (best_of.py) collects
every candidate, then `choose` keeps the best rows, each with its `score`. Tests:
tests/serve/test_api.py, test_openai_client.py, test_tools.py, test_best_of.py.
"""

from __future__ import annotations

import json

from lmstack.serve import protocol as P
from lmstack.serve.best_of import json_score
from lmstack.serve.scheduler import Event
from lmstack.serve.tools import ToolPlan


def sse(payload: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class Reply:
    """Collects a request's events into the final response or into stream chunks."""

    def __init__(self, tokenizer, model: str, chat: bool, body, prompts: list[list[int]],
                 tools: ToolPlan | None = None) -> None:
        self.tokenizer, self.model, self.chat, self.body = tokenizer, model, chat, body
        self.tools = tools
        # rows per prompt: n, or best_of candidates of which `choose` keeps n
        self.samples, self.prompt_tokens = body.best_of or body.n, sum(map(len, prompts))
        self.id = P.new_id("chatcmpl" if chat else "cmpl")
        self.object = "chat.completion" if chat else "text_completion"
        count = len(prompts) * self.samples
        self.open = count
        self.text = [""] * count
        self.tokens: list[list[int]] = [[] for _ in range(count)]
        self.logprobs: list[list[float]] = [[] for _ in range(count)]
        self.tops: list[list] = [[] for _ in range(count)]
        self.finish = [None] * count
        self.scores: list[float | None] = [None] * count   # the scheduler's mean log-prob, or a reward
        self.shown: list[int] | None = None                # after `choose`: the rows answered, in order
        self.ranked_by: str | None = None
        self.completion_tokens = 0

    def add(self, prompt: int, event: Event) -> dict | None:
        """Record an event; return its stream chunk (None if it shows nothing)."""
        i = prompt * self.samples + event.sample
        offset = len(self.text[i])
        self.text[i] += event.text
        self.tokens[i] += event.tokens
        self.logprobs[i] += event.logprobs
        self.tops[i] += event.top_logprobs
        # The stop token was generated (and computed) too, as vLLM and OpenAI count it.
        self.completion_tokens += len(event.tokens) + (event.stop_token is not None)
        if event.finish_reason is not None:
            self.finish[i] = event.finish_reason
            self.scores[i] = event.score
            self.open -= 1
        if not (event.text or event.finish_reason or (self.body.wants_logprobs and event.tokens)):
            return None
        lp = self._logprobs(event.tokens, event.logprobs, event.top_logprobs, offset)
        if self.tools is not None:  # held back until the call is whole
            if event.finish_reason is None:
                return None
            message, reason = self._message(i)
            delta = {k: v for k, v in message.items() if k != "role" and v is not None}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(delta["tool_calls"])]
            return self._chunk([{"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}])
        if self.chat:
            delta = {"content": event.text} if event.text or not event.finish_reason else {}
            choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": event.finish_reason}
        else:
            choice = {"index": i, "text": event.text, "logprobs": lp, "finish_reason": event.finish_reason}
        return self._chunk([choice])

    def choose(self, rows: list[int], ranked_by: str) -> None:
        """Answer with these rows, in this order (best-of-N's choice, `ranked_by` what)."""
        self.shown, self.ranked_by = list(rows), ranked_by

    def _message(self, i: int) -> tuple[dict, str | None]:
        """Choice i's chat message and finish reason: its text, or under tools the call (or
        answer) its JSON holds; a reply cut short by max_tokens stays text ("length")."""
        text, reason = self.text[i], self.finish[i]
        if self.tools is None or reason != "stop":
            return {"role": "assistant", "content": text}, reason
        content, calls = self.tools.reply(text)
        if calls is None:
            return {"role": "assistant", "content": content}, reason
        return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"

    def _logprobs(self, tokens, logprobs, tops, offset) -> dict | None:
        if not self.body.wants_logprobs:
            return None
        if self.chat:
            return P.chat_logprobs(self.tokenizer, tokens, logprobs, tops)
        return P.completion_logprobs(self.tokenizer, tokens, logprobs, tops, offset)

    def _chunk(self, choices: list[dict]) -> dict:
        extra = {"usage": None} if self.body.include_usage else {}
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return P.envelope(self.id, obj, self.model, choices, **extra)

    def start_chunks(self) -> list[dict]:
        """Chat streams open every choice with the assistant role, as OpenAI does."""
        if not self.chat:
            return []
        return [self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for i in range(len(self.text))])]

    def usage_chunk(self) -> dict:
        """The last chunk of a stream with include_usage: no choices, the usage."""
        return {**self._chunk([]), "usage": P.usage(self.prompt_tokens, self.completion_tokens)}

    def response(self) -> dict:
        """The non-streaming response."""
        choices = []
        rows = self.shown if self.shown is not None else range(len(self.text))
        for k, i in enumerate(rows):
            lp = self._logprobs(self.tokens[i], self.logprobs[i], self.tops[i], 0)
            if self.chat:
                message, reason = self._message(i)
                choice = {"index": k, "message": message, "logprobs": lp, "finish_reason": reason}
            else:
                choice = {"index": k, "text": self.text[i], "logprobs": lp, "finish_reason": self.finish[i]}
            if self.shown is not None:  # best-of-N: lmstack's field, what the ranking read
                choice["score"] = json_score(self.scores[i])
            choices.append(choice)
        extra = {"ranked_by": self.ranked_by} if self.shown is not None else {}
        return P.envelope(self.id, self.object, self.model, choices, **extra,
                          usage=P.usage(self.prompt_tokens, self.completion_tokens))
