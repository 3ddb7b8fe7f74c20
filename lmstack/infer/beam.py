"""Beam search, plain and lexically constrained: the highest-scoring continuations of one prompt.

Beam search keeps the `num_beams` best partial continuations by total log-probability and
extends each by every token, as HF transformers' `generate(num_beams=...)` does:

1. prefill the prompt once into a cache of batch 1; the first step's winners all come from
   that one row, and `cache.select(parents)` fans it out to one row per beam;
2. each step, log_softmax of the last logits (after the request's `DecodePlan.process`:
   repetition penalties, bans, ...) is added to the beam scores, and the top 2·num_beams
   candidates over (beams x vocab) are taken, so that num_beams survive even if half of them
   end in a stop id;
3. a candidate ending in a stop id joins the pool of finished hypotheses (only if it ranks
   among the first num_beams, as HF), scored `logprob / length ** length_penalty` (length
   counts generated tokens including the stop id; HF's convention); the best num_beams other
   candidates continue and `cache.select` reorders the cache rows to follow their parents;
4. the search stops when the pool holds num_beams hypotheses (`early_stopping=True`), or,
   with `early_stopping=False`, when in addition the best running beam, scored at the current
   length, cannot beat the pool's worst (HF's `early_stopping=False` heuristic: it ignores that
   a longer beam can score higher when length_penalty > 0), or at `max_new_tokens`, or when
   prompt + generated reaches `max_len` (the context). Unfinished beams then join the pool
   with finish_reason "length", unless the search stopped early; at the last step they join
   alongside that step's stop ids, even if those filled the pool (HF's max-length criterion).
   `tests/infer/test_beam_hf.py` holds all this equal to transformers' `generate`.

With num_beams=1 that is greedy decoding: ties go to the lowest token id, as `argmax`.

Constrained beam search (`force`: token sequences that must all appear, each contiguously, in
the output) follows the grid beam search of Hokamp & Liu 2017 ("Lexically Constrained
Decoding for Sequence Generation Using Grid Beam Search") with the dynamic beam allocation of
Post & Vilar 2018 ("Fast Lexically Constrained Decoding with Dynamic Beam Allocation"), as
HF's `ConstrainedBeamSearchScorer`:

- every beam carries a `ConstraintState` (which phrases are done, progress in the current one);
- the candidates are the usual top 2·num_beams plus, for every beam, each token that advances
  its constraints (so a forced token is always on offer even when the model finds it unlikely)
  and its own best token (Post & Vilar; without it a beam that has met every constraint drops
  out as soon as its continuations leave the global top 2·num_beams);
- candidates are grouped into banks by the number of constraint tokens met and the next beams
  are taken round-robin across the banks, highest bank first (the best of each bank, then the
  second best of each, ...), so partially constrained hypotheses are not crowded out by
  unconstrained ones that score higher simply because they never paid for a forced token. At
  the last step only complete beams can still finish, so they all go first there;
- a hypothesis may end (in a stop id, or at the end of the search) only once every constraint
  is met. If fewer than num_return_sequences did, the rest of the answer is filled with the
  unfinished beams that met the most constraint tokens (ties by score), after the ones that met
  them all: the best available rather than nothing, as HF.

Run the tests:
`.venv/bin/python -m pytest -q tests/infer/test_beam.py lmstack/infer/beam.py --doctest-modules`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lmstack.errors import ConfigError
from lmstack.infer.step import DecodePlan, constraint_mask
from lmstack.infer.structured.constraint import Matcher
from lmstack.models.protocol import model_device


@dataclass
class Hypothesis:
    """One result of beam search: generated ids, their log-probabilities and its beam score."""

    tokens: list[int]              # generated ids only (no prompt), without the final stop id
    logprob: float                 # sum of token_logprobs
    score: float                   # logprob / len(token_logprobs) ** length_penalty
    finish_reason: str             # "stop" (a stop id) or "length" (max_new_tokens, context full)
    token_logprobs: list[float]    # per generated token, the stop id's last if it ended in one
    stop_token: int | None = None  # which stop id ended it (it is not in `tokens`)


def beam_score(logprob: float, length: int, length_penalty: float) -> float:
    """HF's length-normalised beam score; 0 for an empty sequence.

    >>> beam_score(-6.0, 3, 1.0), beam_score(-6.0, 3, 0.0)
    (-2.0, -6.0)
    """
    return logprob / length ** length_penalty if length else 0.0


@dataclass(frozen=True)
class ConstraintState:
    """How far one sequence is through the forced phrases; pure: `advance` returns a new state.

    Only one phrase is in progress at a time. A token that breaks it keeps the longest suffix
    of what was matched plus that token that begins some pending phrase (a KMP-style restart:
    plain reset when there is none), so "1 1 2" is still found in "1 1 1 2". Completing a phrase
    also completes every pending phrase inside it. Whenever the state says a phrase is done, it
    did occur contiguously in the tokens fed.

    >>> s = ConstraintState.start([[5, 6, 7], [9]])
    >>> s.next_tokens(), s.met, s.total, s.complete
    ((5, 9), 0, 4, False)
    >>> s = s.advance(5).advance(6)
    >>> s.current, s.progress, s.met, s.next_tokens()
    (0, 2, 2, (7,))
    >>> s.advance(1).met            # 1 breaks "5 6 7": progress resets
    0
    >>> s.advance(5).progress       # ... but 5 restarts it
    1
    >>> s.advance(9).done           # 9 breaks "5 6 7" and completes [9]
    (False, True)
    >>> s = s.advance(7).advance(9)
    >>> s.complete, s.met, s.next_tokens()
    (True, 4, ())
    >>> ConstraintState.start([[1, 1, 2]]).advance(1).advance(1).advance(1).advance(2).complete
    True
    """

    phrases: tuple[tuple[int, ...], ...]
    done: tuple[bool, ...]
    current: int | None = None  # index of the phrase in progress
    progress: int = 0           # tokens of it matched by the last tokens fed

    @classmethod
    def start(cls, phrases: Iterable[Sequence[int]]) -> ConstraintState:
        """The state before any token: nothing met."""
        ps = tuple(tuple(int(t) for t in p) for p in phrases)
        return cls(ps, (False,) * len(ps))

    @property
    def total(self) -> int:
        """Constraint tokens in all phrases."""
        return sum(map(len, self.phrases))

    @property
    def met(self) -> int:
        """Constraint tokens met: every token of the done phrases plus progress in the current one."""
        return sum(len(p) for p, d in zip(self.phrases, self.done) if d) + self.progress

    @property
    def complete(self) -> bool:
        """Whether every phrase has occurred."""
        return all(self.done)

    def next_tokens(self) -> tuple[int, ...]:
        """The tokens that would advance the constraints from here."""
        if self.current is not None:
            return (self.phrases[self.current][self.progress],)
        return tuple(sorted({p[0] for p, d in zip(self.phrases, self.done) if not d}))

    def advance(self, token: int) -> ConstraintState:
        """The state after one more token."""
        if self.current is not None:
            phrase = self.phrases[self.current]
            if phrase[self.progress] == token:
                return self._matched(self.current, self.progress + 1)
            return self._restart(phrase[: self.progress] + (token,))
        return self._restart((token,))

    def _matched(self, i: int, progress: int) -> ConstraintState:
        phrase = self.phrases[i]
        if progress < len(phrase):
            return replace(self, current=i, progress=progress)
        done = tuple(d or j == i or _contains(phrase, p) for j, (p, d) in enumerate(zip(self.phrases, self.done)))
        return replace(self, done=done, current=None, progress=0)._restart(phrase)

    def _restart(self, recent: tuple[int, ...]) -> ConstraintState:
        """Continue from the longest suffix of `recent` (the last tokens fed) that begins a pending phrase."""
        best_k, best_j = 0, None
        for j, (p, d) in enumerate(zip(self.phrases, self.done)):
            if d:
                continue
            for k in range(min(len(recent), len(p)), best_k, -1):
                if recent[len(recent) - k:] == p[:k]:
                    best_k, best_j = k, j
                    break
        if best_j is None:
            return replace(self, current=None, progress=0)
        return self._matched(best_j, best_k)


def _contains(seq: tuple[int, ...], part: tuple[int, ...]) -> bool:
    """Whether `part` occurs contiguously in `seq`."""
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


@dataclass
class _Beam:
    """A running hypothesis."""

    tokens: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    logprob: float = 0.0
    state: ConstraintState = field(default_factory=lambda: ConstraintState.start(()))
    matcher: Matcher | None = None     # structured output (step.py): this beam's state


class _Pool:
    """The finished hypotheses: at most `size`, the best by score (HF's BeamHypotheses)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hyps: list[Hypothesis] = []

    def add(self, hyp: Hypothesis) -> None:
        """Keep `hyp` if there is room or it beats the worst."""
        self.hyps.append(hyp)
        self.hyps.sort(key=lambda h: -h.score)  # stable: on a tie the earlier one stays
        del self.hyps[self.size:]

    @property
    def full(self) -> bool:
        """Whether `size` hypotheses are in."""
        return len(self.hyps) >= self.size


@torch.no_grad()
def beam_search(model: Any, prompt: Sequence[int], *, num_beams: int, max_new_tokens: int,
                stop_ids: Iterable[int] = (), length_penalty: float = 1.0,
                early_stopping: bool = True, num_return_sequences: int = 1,
                force: Sequence[Sequence[int]] = (), max_len: int | None = None,
                plan: DecodePlan | None = None) -> list[Hypothesis]:
    """The best `num_return_sequences` continuations of `prompt` by (constrained) beam search,
    best first; `plan` (step.py) processes each step's logits (penalties, bans...)."""
    stop = {int(t) for t in stop_ids}
    phrases = _validate(prompt, num_beams, max_new_tokens, length_penalty, num_return_sequences, force, stop)
    prompt = [int(t) for t in prompt]
    empty = [Hypothesis([], 0.0, 0.0, "length", []) for _ in range(num_return_sequences)]
    if max_new_tokens == 0:
        return empty
    cache = model.new_cache(1, max_len)
    limits = [n for n in (max_len, cache.max_len) if n is not None]
    budget = max_new_tokens
    if limits:
        if len(prompt) > min(limits):
            raise ConfigError(f"the prompt of {len(prompt)} tokens does not fit in max_len {min(limits)} "
                              "(the model's context); shorten the prompt")
        budget = min(budget, min(limits) - len(prompt))
    if budget == 0:
        return empty
    device = model_device(model)
    logits = model(torch.tensor([prompt], device=device), cache=cache)[:, -1]
    vocab = logits.size(-1)
    for i, phrase in enumerate(phrases):
        if not all(0 <= t < vocab for t in phrase):
            raise ConfigError(f"force[{i}] = {list(phrase)} has a token id outside the model's "
                              f"vocabulary 0..{vocab - 1}")

    compiled = plan.constraint if plan is not None else None
    beams = [_Beam(state=ConstraintState.start(phrases),
                   matcher=None if compiled is None else compiled.matcher())]
    pool = _Pool(num_beams)
    for step in range(budget):
        if compiled is not None:  # the mask first, as in step.py
            masks = torch.stack([constraint_mask(b.matcher, stop) for b in beams])
            logits = logits.masked_fill(~masks.to(logits.device), float("-inf"))
        if plan is not None:
            logits = plan.process(logits, [prompt + b.tokens for b in beams], [b.tokens for b in beams])
        logp = torch.log_softmax(logits.float(), dim=-1).double()
        cands = _candidates(beams, logp, 2 * num_beams, bool(phrases), stop)

        chosen, parents = [], []
        for rank, (s, r, t, lp, state) in enumerate(_allocate(cands, last=step + 1 == budget)):
            parent = beams[r]
            if t in stop:
                if rank < num_beams and state.complete:
                    pool.add(Hypothesis(list(parent.tokens), s, beam_score(s, step + 1, length_penalty), "stop",
                                        parent.token_logprobs + [lp], stop_token=t))
                continue
            matcher = None
            if parent.matcher is not None:
                matcher = parent.matcher.fork()
                matcher.advance(t)
                if matcher.is_terminated():  # a complete value: this beam is finished
                    if rank < num_beams and state.complete:
                        pool.add(Hypothesis(parent.tokens + [t], s, beam_score(s, step + 1, length_penalty),
                                            "stop", parent.token_logprobs + [lp]))
                    continue
            chosen.append(_Beam(parent.tokens + [t], parent.token_logprobs + [lp], s, state, matcher))
            parents.append(r)
            if len(chosen) == num_beams:
                break
        if not chosen:
            # Nothing can continue: every candidate ended or was banned. If none finished
            # either, the beams as they stand are the best there is.
            beams = [] if pool.hyps else beams
            break
        beams = chosen
        if step + 1 == budget:
            break  # the beams end by length in the same step as this step's stop ids (HF's max length)
        if _done(pool, beams, step + 1, early_stopping, length_penalty):
            beams = []
            break
        cache.select(parents)
        logits = model(torch.tensor([[b.tokens[-1]] for b in beams], device=device), cache=cache)[:, -1]
    return _finish(pool, beams, num_return_sequences, length_penalty)


def _candidates(beams: list[_Beam], logp: torch.Tensor, n: int, constrained: bool,
                stop: set[int]) -> list[tuple[float, int, int, float, ConstraintState]]:
    """(total logprob, parent row, token, token logprob, constraint state) of each candidate:
    the top n over (beams x vocab) and, when constrained, Post & Vilar's extras: every beam's
    best token and the tokens that advance its constraints. Banned (-inf) ones are left out."""
    vocab = logp.size(-1)
    scores = torch.tensor([b.logprob for b in beams], dtype=torch.float64, device=logp.device)
    total = (scores[:, None] + logp).flatten()
    pairs = _top(total, n)
    if constrained:
        best = logp.argmax(dim=-1).tolist()
        extra = [r * vocab + t for r, b in enumerate(beams) for t in (best[r], *b.state.next_tokens())]
        seen = set(pairs)
        pairs += [f for f in dict.fromkeys(extra) if f not in seen]
    flat = torch.tensor(pairs, dtype=torch.long, device=logp.device)
    cands = []
    for f, s, lp in zip(pairs, total[flat].tolist(), logp.flatten()[flat].tolist()):
        if s == -math.inf:
            continue
        r, t = divmod(f, vocab)
        state = beams[r].state if t in stop or not constrained else beams[r].state.advance(t)
        cands.append((s, r, t, lp, state))
    return cands


def _top(flat: torch.Tensor, n: int) -> list[int]:
    """Flat indices of the n highest scores; ties at the cut go to the lowest index, as argmax."""
    n = min(n, flat.numel())
    kth = torch.topk(flat, n).values[-1]
    above = torch.nonzero(flat > kth).flatten()
    tied = torch.nonzero(flat == kth).flatten()[: n - above.numel()]  # nonzero() is in index order
    return torch.cat([above, tied]).tolist()


def _allocate(cands: list[tuple], last: bool) -> list[tuple]:
    """Candidates in the order beams are filled: round-robin over banks (constraint tokens met),
    highest bank first, best score first within a bank; without constraints simply by score.

    At the `last` step a beam that has not met every constraint can never finish, so all the
    complete ones go first: they are the only ones the pool takes."""
    banks: dict[int | float, list[tuple]] = {}
    for c in sorted(cands, key=lambda c: (-c[0], c[1], c[2])):  # score, then parent, then token id
        banks.setdefault(math.inf if last and c[4].complete else c[4].met, []).append(c)
    if math.inf in banks:
        return banks.pop(math.inf) + _allocate([c for bank in banks.values() for c in bank], last=False)
    order = [banks[m] for m in sorted(banks, reverse=True)]
    width = max(map(len, order), default=0)
    return [bank[i] for i in range(width) for bank in order if i < len(bank)]


def _done(pool: _Pool, beams: list[_Beam], length: int, early_stopping: bool, length_penalty: float) -> bool:
    """HF's stopping rule: the pool is full and (early_stopping or no running beam, scored at the
    current length, beats the pool's worst)."""
    if not pool.full:
        return False
    if early_stopping:
        return True
    best = max(b.logprob for b in beams)
    return pool.hyps[-1].score >= beam_score(best, length, length_penalty)


def _finish(pool: _Pool, beams: list[_Beam], n: int, length_penalty: float) -> list[Hypothesis]:
    """Unfinished beams that met every constraint join the pool; short of n, the ones that met most fill in."""
    def hyp(b: _Beam) -> Hypothesis:
        return Hypothesis(list(b.tokens), b.logprob, beam_score(b.logprob, len(b.tokens), length_penalty),
                          "length", list(b.token_logprobs))

    for b in beams:
        if b.state.complete:
            pool.add(hyp(b))
    best = pool.hyps[:n]
    rest = sorted((b for b in beams if not b.state.complete),
                  key=lambda b: (-b.state.met, -beam_score(b.logprob, len(b.tokens), length_penalty)))
    return best + [hyp(b) for b in rest[: n - len(best)]]


def _validate(prompt: Sequence[int], num_beams: int, max_new_tokens: int, length_penalty: float,
              num_return_sequences: int, force: Sequence[Sequence[int]], stop: set[int]) -> list[tuple[int, ...]]:
    """Raise ConfigError on a bad setting; return the forced phrases as tuples."""
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ConfigError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if not isinstance(num_return_sequences, int) or not 1 <= num_return_sequences <= num_beams:
        raise ConfigError(f"num_return_sequences must be between 1 and num_beams ({num_beams}), "
                          f"got {num_return_sequences!r}; raise num_beams")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(length_penalty, (int, float)) or not math.isfinite(length_penalty):
        raise ConfigError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if len(prompt) == 0:
        raise ConfigError("beam search needs a non-empty prompt (the model predicts from at least one "
                          "token); start it with a BOS token")
    phrases = [tuple(int(t) for t in p) for p in force]
    for i, phrase in enumerate(phrases):
        if not phrase:
            raise ConfigError(f"force[{i}] is an empty token sequence; every forced sequence needs at least one token")
        if hit := stop.intersection(phrase):
            raise ConfigError(f"force[{i}] = {list(phrase)} contains the stop id {min(hit)}, so it could never "
                              "appear in the output; drop it from force or from the stop ids")
    return phrases


