"""The route handlers are plain functions: called alone, with a server's state and no HTTP."""

from __future__ import annotations

import asyncio

import pytest

from lmstack.serve import protocol as P
from lmstack.serve.app import APIError, ServerConfig, check_model, completions, health, models, new_server, settings

from .conftest import tiny_engine


class Connected:
    """The one thing a non-streaming route asks of its request."""

    async def is_disconnected(self) -> bool:
        return False


@pytest.fixture
def server(tok):
    server = new_server(tiny_engine(tok), ServerConfig(model_name="m", max_batch=2))
    server.scheduler.start()
    yield server
    server.scheduler.close()


def test_models_and_health(server):
    assert asyncio.run(models(server))["data"][0]["id"] == "m"
    idle = asyncio.run(health(server))
    assert idle == {"status": "ok", **server.scheduler.stats()} and idle["running"] == 0


def test_completion_matches_the_engine(server):
    body = P.CompletionRequest(prompt="def main(", max_tokens=12, temperature=0)
    reply = asyncio.run(completions(body, Connected(), server))
    expected = server.engine.generate("def main(", temperature=0, max_new_tokens=12)
    assert reply["choices"][0]["text"] == expected.text
    assert reply["usage"]["prompt_tokens"] == len(server.engine.encode("def main("))


def test_refusals_name_their_field(server):
    with pytest.raises(APIError) as e:
        check_model(server, "other")
    assert (e.value.status, e.value.param, e.value.code) == (404, "model", "model_not_found")
    check_model(server, "m")
    check_model(server, None)
    with pytest.raises(APIError) as e:  # more samples than batch rows
        settings(server, P.CompletionRequest(prompt="x", n=3), 16, [], "prompt", 1)
    assert (e.value.status, e.value.param) == (400, "n")
    with pytest.raises(APIError) as e:  # a prompt that fills the context
        settings(server, P.CompletionRequest(prompt="x"), 16, [], "prompt", server.ctx)
    assert (e.value.status, e.value.code) == (400, "context_length_exceeded")
