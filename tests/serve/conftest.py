"""A real server on a free loopback port, running in a thread of the test process."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import pytest
import torch
import uvicorn

from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.serve.app import ServerConfig, create_app


@dataclass
class LiveServer:
    url: str
    model: str
    app: object
    engine: Engine


@contextlib.contextmanager
def serve(engine: Engine, config: ServerConfig | None = None, speculative=None, template=None,
          ranker=None):
    """Run `create_app(engine, config, template, speculative, ranker)` under uvicorn until the
    block ends."""
    config = config or ServerConfig(model_name="tiny")
    app = create_app(engine, config, template, speculative=speculative, ranker=ranker)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", config.model_name, app, engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def tiny_engine(tok, block_size: int = 256) -> Engine:
    """A random-weight GPT with the session tokenizer: fast, and its replies are gibberish."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=64))
    return Engine(model, tok)


@pytest.fixture(scope="session")
def live_server(tok):
    with serve(tiny_engine(tok)) as server:
        yield server
