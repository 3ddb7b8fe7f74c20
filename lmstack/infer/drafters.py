"""What a drafter is: the interface speculative decoding verifies proposals from.

A drafter proposes tokens; the decoder (speculative.py) checks them against the target model in
one forward pass and tells the drafter what was kept. The drafters themselves: a draft model and
prompt lookup in speculative.py, Medusa heads in medusa_drafter.py. This interface has its own
module so that medusa_drafter.py and speculative.py need not import each other.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass

import torch

from lmstack.infer.step import DecodePlan, Row


@dataclass
class Round:
    """What the decoder tells a drafter about the sequence being decoded."""

    plan: DecodePlan        # the request's settings, compiled (step.py)
    row: Row
    max_len: int


class Drafter(abc.ABC):
    """Proposes tokens; the decoder verifies them. Subclasses: draft model, prompt lookup, Medusa."""

    uses_hidden = False  # wants the target's last hidden state at every commit (Medusa)

    def clone(self) -> Drafter:
        """A drafter for one more sequence decoded at the same time (a server's batch rows),
        sharing the weights; `start` gives it its own state."""
        return copy.copy(self)

    def start(self, state: Round) -> None:
        """A new sequence begins (state.row holds its prompt)."""
        self.state = state

    def room(self, seq_len: int) -> int:
        """How many tokens it can propose after a sequence of `seq_len` tokens."""
        return 1 << 30

    @abc.abstractmethod
    def propose(self, seq: list[int], n: int) -> tuple[list[int], torch.Tensor | None]:
        """Up to `n` tokens to follow `seq`, and the (len, V) probabilities they were drawn
        from, or None if they were chosen deterministically."""

    def commit(self, seq: list[int], hidden: torch.Tensor | None) -> None:
        """`seq` (prompt + generated) is final; `hidden` (n_embd,) is the target's last hidden
        state at the position that predicted seq[-1] (only when `uses_hidden`)."""
