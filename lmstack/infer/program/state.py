"""The state of a running prompt program: its text so far, its filled holes, and the backend
branch that holds what the model has already read (for the local backend, one KV cache that
only grows). A program is a Python function that appends to a state.

    from lmstack.program import gen, select, run
    def qa(s, question):
        s += "Q: " + question + "\\nA: "
        s += gen("answer", max_tokens=20, stop="\\n", regex=r"[0-9]+")
        s += "\\nSure? " + select("verdict", ["yes", "no"])
    s = run(qa, engine, question="2 + 2?")       # engine: an Engine or a backend
    s["answer"], s["verdict"], s.text, s.stats

Python control flow runs between holes (`if s["verdict"] == "no": ...`); a tool is any
Python function whose result is appended as text (`s += str(calc(s["expr"]))`). `s.fork(n)`
returns n states that share everything appended so far (computed once); `s.join(branches)`
gathers their holes back into `s` as lists.

Errors: every failure inside a program is raised as `ProgramError` (a ConfigError) naming the
hole, with `.state`, the partial state, readable: its text and the holes filled so far.

This is LMQL's (Beurer-Kellner et al., PLDI 2023) and SGLang's (Zheng et al. 2024) frontend
idea on our engine; docs/programs.md. Tests: `pytest tests/infer/test_program.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from lmstack.errors import ConfigError, LMStackError
from lmstack.infer.program.holes import Gen, Select, _items


class ProgramError(ConfigError):
    """A program failed at a hole or a read; `.state` is the partial state."""

    def __init__(self, message: str, state: ProgramState | None = None) -> None:
        super().__init__(message)
        self.state = state


class CutShort(ConfigError):
    """A backend wrote `.text` for a hole but stopped (max_tokens, the context) before the
    hole's constraint was satisfied: the text is in the branch, the hole has no value."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


@dataclass
class Stats:
    """Tokens the model computed for a run (shared by all its branches): `prefill` tokens of
    fixed text, `decode` sampled tokens, `forced` tokens appended without sampling
    (jump-forward), `select` option tokens scored, and `forwards`, the model calls."""

    prefill: int = 0
    decode: int = 0
    forced: int = 0
    select: int = 0
    forwards: int = 0

    @property
    def computed(self) -> int:
        """Every token position the model computed."""
        return self.prefill + self.decode + self.forced + self.select


@dataclass(frozen=True)
class Decoder:
    """How holes are decoded unless they say otherwise: "argmax" (greedy), "sample" (with
    `temperature`; `n` runs of the program) or "beam" (`n` beams per gen hole); `seed` makes
    sampled runs repeatable (hole i of a run draws from seed + i)."""

    kind: str = "argmax"
    n: int = 1
    temperature: float = 1.0
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.kind not in ("argmax", "sample", "beam"):
            raise ConfigError(f"decoder {self.kind!r} is unknown; use argmax, sample or beam")
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"decoder {self.kind}: n must be an integer >= 1, got {self.n!r}")

    def settings(self) -> dict[str, Any]:
        """The GenerationConfig settings of a gen hole under this decoder."""
        if self.kind == "sample":
            return {"temperature": self.temperature}
        if self.kind == "beam":
            return {"temperature": 0, "num_beams": self.n}
        return {"temperature": 0}


@dataclass(eq=False)
class ProgramState:
    """Text and holes of one program branch; `+=` text, a `gen`/`select` hole or Parts."""

    branch: Any                        # the backend's branch (local.py, remote.py)
    decoder: Decoder = field(default_factory=Decoder)
    stats: Stats = field(default_factory=Stats)
    text: str = ""
    values: dict[str, Any] = field(default_factory=dict)   # hole -> parsed value
    texts: dict[str, str] = field(default_factory=dict)    # hole -> its text
    seed_offset: int = 0
    holes_run: int = 0

    def __iadd__(self, item: Any) -> Self:
        for part in _items(item):
            if isinstance(part, str):
                self.branch.append(part)
                self.text += part
            elif isinstance(part, Gen):
                self._gen(part)
            else:
                self._select(part)
        return self

    def _seed(self) -> int | None:
        seed = self.decoder.seed
        self.holes_run += 1
        return None if seed is None else seed + self.seed_offset + self.holes_run - 1

    def _check_new(self, name: str) -> None:
        if name in self.values:
            raise ProgramError(f"hole {name!r} is filled twice; give each hole its own name",
                               self)

    def _gen(self, hole: Gen) -> None:
        self._check_new(hole.name)
        settings = {**self.decoder.settings(), **hole.config()}
        if settings.get("temperature", 0) != 0:
            settings.setdefault("seed", self._seed())
        try:
            text = self.branch.gen(hole, settings)
        except CutShort as e:
            self._partial(hole.name, e.text)
            raise ProgramError(f"hole {hole.name!r}: {e}", self) from e
        except LMStackError as e:
            raise ProgramError(f"hole {hole.name!r}: {e}", self) from e
        try:
            value = hole.parse(text)
        except LMStackError as e:
            self._partial(hole.name, text)
            raise ProgramError(f"hole {hole.name!r}: {e}", self) from e
        self._fill(hole.name, text, value)

    def _select(self, hole: Select) -> None:
        self._check_new(hole.name)
        temperature = hole.temperature if hole.temperature is not None else (
            self.decoder.temperature if self.decoder.kind == "sample" else 0.0)
        try:
            index = self.branch.select(hole, temperature, self._seed())
        except LMStackError as e:
            raise ProgramError(f"select {hole.name!r}: {e}", self) from e
        self._fill(hole.name, hole.options[index], hole.options[index])

    def _partial(self, name: str, text: str) -> None:
        """A hole's text the branch has read, though it has no value."""
        self.text += text
        self.texts[name] = text

    def _fill(self, name: str, text: str, value: Any) -> None:
        self.text += text
        self.texts[name], self.values[name] = text, value

    def __getitem__(self, name: str) -> Any:
        if name not in self.values:
            filled = ", ".join(self.values) or "none yet"
            raise ProgramError(f"hole {name!r} is used before it is filled (filled: {filled}); "
                               "append its gen/select to the state first", self)
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def fork(self, n: int) -> list[ProgramState]:
        """n branches that continue from here; what was appended so far is computed once."""
        if not isinstance(n, int) or n < 1:
            raise ProgramError(f"fork needs a number of branches >= 1, got {n!r}", self)
        try:
            branches = self.branch.fork(n)
        except LMStackError as e:
            raise ProgramError(f"fork: {e}", self) from e
        return [ProgramState(b, self.decoder, self.stats, self.text, dict(self.values),
                             dict(self.texts), self.seed_offset + 7919 * (j + 1) + self.holes_run)
                for j, b in enumerate(branches)]

    def join(self, branches: list[ProgramState]) -> dict[str, list[Any]]:
        """Gather the holes the branches filled after the fork: `self[name]` becomes the list
        of their values, branch by branch; the branches' text stays theirs."""
        names = [k for k in branches[0].values if k not in self.values] if branches else []
        for name in names:
            missing = [i for i, b in enumerate(branches) if name not in b.values]
            if missing:
                raise ProgramError(f"join: hole {name!r} is not filled in branches {missing}",
                                   self)
            self.values[name] = [b.values[name] for b in branches]
            self.texts[name] = [b.texts[name] for b in branches]
        return {name: self.values[name] for name in names}


def fork(state: ProgramState, n: int) -> list[ProgramState]:
    """`state.fork(n)`: n branches sharing the prefix."""
    return state.fork(n)


def join(state: ProgramState, branches: list[ProgramState]) -> dict[str, list[Any]]:
    """`state.join(branches)`: their holes gathered into `state` as lists."""
    return state.join(branches)
