"""Best-of-N over HTTP: `best_of` samples of each prompt, answered with the `n` best.

OpenAI's completions take `best_of` (the candidates drawn on the server) next to `n` (how many
are returned); chat completions have no such field, so there `best_of` is an lmstack extension
under the same name (as vLLM's chat route takes it too). The candidates are ranked by the
server's reward model (`lmstack serve --reward-model DIR`, posttrain/reward_ranking.py: a chat
reply as the conversation it answers, a completion as prompt + text + end of text), else by
mean log-probability, the engine's own default (`Engine.generate(best_of=...)`: the same
`rank_samples`, tested equal). Each returned choice carries its `score` (lmstack-specific: the
reward, or the mean log-probability; null when it has none) and the response says which in
`ranked_by` ("reward_model" or "mean_logprob"). `usage` counts the tokens of every candidate,
as OpenAI bills them.

Each of these is a 400 naming its field: best_of below n; best_of above the server's batch
(`--max-batch`: a prompt's candidates decode side by side); best_of > 1 with greedy decoding
(temperature 0: every candidate is the same); with `stream` (a choice is known only once every
candidate is done); with function calling (`tools`: one answer).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lmstack.infer.engine import rank_samples
from lmstack.infer.step import Completion
from lmstack.tokenizer.chat_template import field_error


def ranks(body: Any) -> bool:
    """Whether the request is best-of-N: its candidates ranked, the best n kept."""
    return (body.best_of or 1) > 1


def check_samples(body: Any, max_batch: int) -> None:
    """ConfigError (its `param` the field) for an n or a best_of the server cannot honour."""
    if body.n > max_batch:
        raise field_error("n", f"must be at most {max_batch} (the server's batch size), got {body.n}")
    if body.best_of is None:
        return
    if body.best_of < body.n:
        raise field_error("best_of", f"({body.best_of}) must be at least n ({body.n}): n of the "
                                     "best_of candidates are returned")
    if body.best_of > max_batch:
        raise field_error("best_of", f"must be at most {max_batch} (the server's batch size, where a "
                                     f"prompt's candidates decode together), got {body.best_of}")
    if not ranks(body):
        return
    if body.temperature == 0:
        raise field_error("best_of", "> 1 needs sampling: with temperature 0 every candidate is the "
                                     "same; set temperature above 0")
    if body.stream:
        raise field_error("stream", "cannot be used with best_of > 1: the best candidate is known "
                                    "only when all are done; drop stream or best_of")
    if getattr(body, "tools", None):
        raise field_error("best_of", "function calling answers with one choice; drop best_of or tools")


def ranking_config(cfg: Any, ranker: Any, body: Any) -> Any:
    """The request's generation config, with log-probabilities computed when best-of-N ranks by
    them (no reward model); what the client sees still follows its own `logprobs` field."""
    if ranks(body) and ranker is None and not cfg.logprobs:
        return dataclasses.replace(cfg, logprobs=True)
    return cfg


def rank_reply(reply: Any, ranker: Any, contexts: list[str | list[dict]], keep: int) -> None:
    """Rank each prompt's candidates in `reply` (serve/reply.py) and keep its `keep` best.
    `contexts[p]` is prompt p as the reward model reads it: the prompt's text (completions) or
    the conversation's messages (chat). Runs the reward model: call it off the event loop."""
    chosen: list[int] = []
    for p, context in enumerate(contexts):
        rows = range(p * reply.samples, (p + 1) * reply.samples)
        group = [candidate(reply, i) for i in rows]
        scorer = None
        if ranker is not None:
            scorer = ranker.scorer(context if isinstance(context, list) else None)
        best = rank_samples(group, keep, scorer, context if isinstance(context, str) else "")
        row_of = {id(c): i for c, i in zip(group, rows)}  # by identity: equal samples are two rows
        chosen += [row_of[id(c)] for c in best]
        for c, i in zip(group, rows):
            reply.scores[i] = c.score
    reply.choose(chosen, "reward_model" if ranker is not None else "mean_logprob")


def prompt_texts(prompts: list[str | list[int]], tokenizer: Any) -> list[str]:
    """Each completions prompt as text, what a reward model reads (token ids decoded)."""
    if tokenizer is None:
        return [p if isinstance(p, str) else "" for p in prompts]
    return [p if isinstance(p, str) else tokenizer.decode(p) for p in prompts]


def candidate(reply: Any, i: int) -> Completion:
    """Row i of a reply as the engine's Completion (text, tokens, the scheduler's score)."""
    return Completion(reply.text[i], reply.tokens[i], reply.finish[i] or "length", 0,
                      reply.logprobs[i], [], reply.scores[i])


def json_score(score: float | None) -> float | None:
    """A score as JSON can hold it: a finite number, else null (-inf: a reply the reward model
    cannot read).

    >>> json_score(-1.5), json_score(float("-inf")), json_score(None)
    (-1.5, None, None)
    """
    return score if score is not None and math.isfinite(score) else None
