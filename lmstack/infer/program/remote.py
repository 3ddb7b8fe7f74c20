"""The completion-API backend: a program run the way a client of a plain completion API must
run it, each hole re-sending the whole text so far. Two kinds of API:

- `CompletionBackend.http(url, model)`: an OpenAI-compatible server (ours, vLLM, ...) over
  POST {url}/completions, using only what the API offers: `max_tokens`, `stop`,
  `temperature`, `seed`, `response_format` for a JSON-schema hole, and, when the server takes
  vLLM's extensions (`guided=True`, ours does), `guided_regex` / `guided_grammar` /
  `guided_choice` for regex, grammar and typed holes and for `select` (generated under the
  choice constraint: the API offers no scoring of given text). A constraint the server
  cannot enforce is a clear error before the request is sent.
- `CompletionBackend.local(engine)`: the same on a local Engine (each hole a full
  `engine.generate`, each select option a full `engine.score`): the naive baseline
  benchmarks/programs.py measures the growing-cache backend (local.py) against.

Every backend counts the tokens the server computed (its `usage`) in the run's Stats.
Tests: `pytest tests/infer/test_program_remote.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from lmstack.errors import ConfigError
from lmstack.infer.program.holes import Gen, Select
from lmstack.infer.program.state import CutShort, Stats

# GenerationConfig setting -> the completion API's field.
API_FIELDS = {"max_new_tokens": "max_tokens", "temperature": "temperature", "stop": "stop",
              "seed": "seed", "top_p": "top_p"}
GUIDED = {"regex": "guided_regex", "grammar": "guided_grammar", "choices": "guided_choice"}

# complete(prompt, fields) -> (text, prompt tokens, completion tokens, finish_reason)
Complete = Callable[[str, dict[str, Any]], tuple[str, int, int, str | None]]
# score(prompt, option) -> (log-probability, its tokens, tokens computed)
Score = Callable[[str, str], tuple[float, int, int]]


class CompletionBackend:
    """Programs over a completion function; `guided`: it takes vLLM's guided_* fields."""

    def __init__(self, complete: Complete, score: Score | None = None, guided: bool = False,
                 name: str = "completion API") -> None:
        self.complete, self.score, self.guided, self.name = complete, score, guided, name

    @classmethod
    def http(cls, url: str, model: str | None = None, guided: bool = True,
             timeout: float = 120.0, client: Any = None) -> CompletionBackend:
        """An OpenAI-compatible server at base `url` (e.g. http://127.0.0.1:8000/v1)."""
        import httpx

        http = client or httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

        def complete(prompt: str, fields: dict[str, Any]) -> tuple[str, int, int]:
            body = {"prompt": prompt, **fields, **({"model": model} if model else {})}
            try:
                r = http.post("/completions", json=body)
            except httpx.HTTPError as e:
                raise ConfigError(f"the server at {url} did not answer ({e}); is it running?"
                                  ) from None
            if r.status_code != 200:
                raise ConfigError(f"the server at {url} refused the hole: HTTP "
                                  f"{r.status_code} {r.text[:300]}")
            reply = r.json()
            usage = reply.get("usage") or {}
            choice = reply["choices"][0]
            return (choice["text"], usage.get("prompt_tokens", 0),
                    usage.get("completion_tokens", 0), choice.get("finish_reason"))

        return cls(complete, None, guided, f"the server at {url}")

    @classmethod
    def local(cls, engine: Any) -> CompletionBackend:
        """The naive way on a local Engine: every hole and option re-reads the whole prompt."""

        def complete(prompt: str, fields: dict[str, Any]) -> tuple[str, int, int]:
            settings = {k: v for k, v in fields.items() if k != "max_tokens"}
            settings["max_new_tokens"] = fields.get("max_tokens", 64)
            for name, api in GUIDED.items():
                if api in settings:
                    settings[name] = settings.pop(api)
            fmt = settings.pop("response_format", None)
            if fmt is not None:
                settings["json_schema"] = fmt["json_schema"]["schema"]
            c = engine.generate(prompt, **settings)
            return c.text, c.prompt_tokens, len(c.tokens), c.finish_reason

        def score(prompt: str, option: str) -> tuple[float, int, int]:
            s = engine.score(prompt, option)
            return s.logprob, len(s.tokens), len(engine.encode(prompt)) + len(s.tokens) - 1

        return cls(complete, score, True, "the local engine")

    def start(self, stats: Stats) -> CompletionBranch:
        """An empty branch."""
        return CompletionBranch(self, stats)

    def fields(self, hole: Gen, settings: dict[str, Any]) -> dict[str, Any]:
        """The API fields of a gen hole; ConfigError for what this API cannot do."""
        out: dict[str, Any] = {}
        for key, value in settings.items():
            if key in API_FIELDS:
                if key == "stop" and not value:
                    continue
                out[API_FIELDS[key]] = value
            elif key == "json_schema":
                out["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": hole.name, "schema": value}}
            elif key in GUIDED and self.guided:
                out[GUIDED[key]] = value
            elif key in GUIDED:
                raise ConfigError(f"hole {hole.name!r}: {self.name} cannot enforce a {key} "
                                  "constraint (a plain completion API offers max_tokens, stop "
                                  "and response_format); use the local backend, or a server "
                                  "that takes vLLM's guided_* fields (guided=True)")
            elif key == "num_beams":
                raise ConfigError(f"hole {hole.name!r}: {self.name} offers no beam search; use "
                                  "argmax or sample")
            else:
                raise ConfigError(f"hole {hole.name!r}: {self.name} has no field for setting "
                                  f"{key!r}; drop it or use the local backend")
        return out


def whole(fields: dict[str, Any], text: str) -> bool:
    """Whether a reply that a server ended at max_tokens still fits the hole's constraint (the
    API does not say): a regex or choice checked here, JSON parsed; a grammar cannot be told.

    >>> whole({"guided_regex": "[0-9]+"}, "123"), whole({"guided_choice": ["ab"]}, "a")
    (True, False)
    >>> whole({}, "anything"), whole({"guided_grammar": 'root ::= "a"'}, "a")
    (True, False)
    """
    if "guided_regex" in fields:
        return re.fullmatch(fields["guided_regex"], text) is not None
    if "guided_choice" in fields:
        return text in fields["guided_choice"]
    if "response_format" in fields:
        try:
            json.loads(text)
        except ValueError:
            return False
        return True
    return "guided_grammar" not in fields


class CompletionBranch:
    """A branch is its text: each hole sends all of it."""

    def __init__(self, backend: CompletionBackend, stats: Stats, text: str = "") -> None:
        self.backend, self.stats, self.text = backend, stats, text

    def append(self, text: str) -> None:
        """Fixed text: sent with the next hole."""
        self.text += text

    def gen(self, hole: Gen, settings: dict[str, Any]) -> str:
        """One completion request with the whole text as its prompt."""
        if not self.text:
            raise ConfigError("the program has no text before its first hole: append a prompt "
                              "first (an empty prompt has nothing to continue)")
        fields = self.backend.fields(hole, settings)
        text, prompt_tokens, completion_tokens, finish = self.backend.complete(self.text, fields)
        self.stats.prefill += prompt_tokens
        self.stats.decode += completion_tokens
        self.stats.forwards += 1 + completion_tokens
        self.text += text
        if finish == "length" and not whole(fields, text):  # stopped inside the constrained value
            raise CutShort(f"{completion_tokens} tokens (max_tokens {fields.get('max_tokens')}) "
                           f"ended it before its constraint was satisfied: {text[:60]!r}...; "
                           "raise max_tokens", text)
        return text

    def select(self, hole: Select, temperature: float, seed: int | None) -> int:
        """Score each option with the whole prompt (local), or generate under guided_choice."""
        if self.backend.score is not None and temperature == 0:
            scores = []
            for option in hole.options:
                logprob, n, computed = self.backend.score(self.text, option)
                self.stats.select += computed
                self.stats.forwards += 1
                scores.append(logprob / (1 if hole.normalize == "sum" else n))
            best = max(range(len(scores)), key=scores.__getitem__)
        elif self.backend.guided:
            reply = self.gen(Gen(hole.name, max_tokens=64, choices=hole.options),
                             {"choices": hole.options, "max_new_tokens": 64,
                              "temperature": temperature, "seed": seed})
            self.text = self.text[:len(self.text) - len(reply)]
            if reply not in hole.options:
                raise ConfigError(f"{self.backend.name} answered {reply!r}, not one of the "
                                  "options: it did not enforce guided_choice")
            best = hole.options.index(reply)
        else:
            raise ConfigError(f"select {hole.name!r}: {self.backend.name} can neither score "
                              "given text nor take guided_choice; use the local backend")
        self.text += hole.options[best]
        return best

    def fork(self, n: int) -> list[CompletionBranch]:
        """n copies of the text (each later hole re-sends it all)."""
        return [CompletionBranch(self.backend, self.stats, self.text) for _ in range(n)]
