"""Running a program: on an Engine (the local backend, local.py) or any backend, once or
once per sample of a `sample(n)` decoder; `@program` gives a function a `.run`.

    from lmstack.program import gen, program
    @program
    def hello(s):
        s += "Hello," + gen("rest", max_tokens=8)
    hello.run(engine)["rest"]

Tests: `pytest tests/infer/test_program.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmstack.errors import ConfigError
from lmstack.infer.program.local import LocalBackend
from lmstack.infer.program.state import Decoder, ProgramState, Stats


def as_backend(target: Any) -> Any:
    """A backend from an Engine (the local backend) or a backend itself."""
    if hasattr(target, "start"):
        return target
    if hasattr(target, "model") and hasattr(target, "plan"):
        return LocalBackend(target)
    raise ConfigError(f"a program runs on an Engine or a backend (LocalBackend, "
                      f"CompletionBackend), got {type(target).__name__}")


def new_state(target: Any, decoder: Decoder | None = None) -> ProgramState:
    """An empty state on a backend (or an Engine)."""
    stats = Stats()
    return ProgramState(as_backend(target).start(stats), decoder or Decoder(), stats)


def run(fn: Callable[..., Any], target: Any, *args: Any, decoder: Decoder | None = None,
        **kwargs: Any) -> ProgramState:
    """Run program `fn(state, *args, **kwargs)` on an Engine or backend; return its state.
    A sample decoder with n > 1 runs it n times: use `run_all` to get every run."""
    return run_all(fn, target, *args, decoder=decoder, **kwargs)[0]


def run_all(fn: Callable[..., Any], target: Any, *args: Any, decoder: Decoder | None = None,
            **kwargs: Any) -> list[ProgramState]:
    """Every run of `fn` the decoder asks for (sample(n) runs it n times, run j seeded with
    seed + 1000 * j)."""
    decoder = decoder or Decoder()
    runs = decoder.n if decoder.kind == "sample" else 1
    backend = as_backend(target)
    states = []
    for j in range(runs):
        state = new_state(backend, decoder)
        state.seed_offset = 1000 * j
        fn(state, *args, **kwargs)
        states.append(state)
    return states


class program:  # a decorator, named as one
    """Decorator: `@program def qa(s, question): ...`, then `qa.run(engine, question=...)`."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__doc__, self.__name__ = fn.__doc__, fn.__name__

    def __call__(self, state: ProgramState, *args: Any, **kwargs: Any) -> Any:
        return self.fn(state, *args, **kwargs)

    def run(self, target: Any, *args: Any, decoder: Decoder | None = None,
            **kwargs: Any) -> ProgramState:
        """`run(self, target, ...)`: the state after one run."""
        return run(self.fn, target, *args, decoder=decoder, **kwargs)
