"""A request's reply in OpenAI's shapes: its samples' events collected into the final
`text_completion` / `chat.completion` response, or turned into server-sent-event chunks as they
arrive (chat streams open with the assistant role; usage last when asked for). The logprobs
spellings are protocol.py's. Tests: tests/serve/test_api.py, test_openai_client.py.
"""

from __future__ import annotations

import json

from lmstack.serve import protocol as P
from lmstack.serve.scheduler import Event


def sse(payload: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class Reply:
    """Collects a request's events into the final response or into stream chunks."""

    def __init__(self, tokenizer, model: str, chat: bool, body, prompts: list[list[int]]) -> None:
        self.tokenizer, self.model, self.chat, self.body = tokenizer, model, chat, body
        self.n, self.prompt_tokens = body.n, sum(map(len, prompts))
        self.id = P.new_id("chatcmpl" if chat else "cmpl")
        self.object = "chat.completion" if chat else "text_completion"
        count = len(prompts) * body.n
        self.open = count
        self.text = [""] * count
        self.tokens: list[list[int]] = [[] for _ in range(count)]
        self.logprobs: list[list[float]] = [[] for _ in range(count)]
        self.tops: list[list] = [[] for _ in range(count)]
        self.finish = [None] * count
        self.completion_tokens = 0

    def add(self, prompt: int, event: Event) -> dict | None:
        """Record an event; return its stream chunk (None if it shows nothing)."""
        i = prompt * self.n + event.sample
        offset = len(self.text[i])
        self.text[i] += event.text
        self.tokens[i] += event.tokens
        self.logprobs[i] += event.logprobs
        self.tops[i] += event.top_logprobs
        # The stop token was generated (and computed) too, as vLLM and OpenAI count it.
        self.completion_tokens += len(event.tokens) + (event.stop_token is not None)
        if event.finish_reason is not None:
            self.finish[i] = event.finish_reason
            self.open -= 1
        if not (event.text or event.finish_reason or (self.body.wants_logprobs and event.tokens)):
            return None
        lp = self._logprobs(event.tokens, event.logprobs, event.top_logprobs, offset)
        if self.chat:
            delta = {"content": event.text} if event.text or not event.finish_reason else {}
            choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": event.finish_reason}
        else:
            choice = {"index": i, "text": event.text, "logprobs": lp, "finish_reason": event.finish_reason}
        return self._chunk([choice])

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
        for i, text in enumerate(self.text):
            lp = self._logprobs(self.tokens[i], self.logprobs[i], self.tops[i], 0)
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "logprobs": lp, "finish_reason": self.finish[i]})
            else:
                choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": self.finish[i]})
        return P.envelope(self.id, self.object, self.model, choices,
                          usage=P.usage(self.prompt_tokens, self.completion_tokens))
