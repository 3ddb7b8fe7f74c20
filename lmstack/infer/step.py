"""One decode step: a request's settings compiled once (`DecodePlan`), and the one function
(`step`) that turns the next-token logits of a batch of rows into their tokens.

Every decoder of the stack goes through here, so a setting means the same thing everywhere:
`Engine.generate` and `Engine.stream` (sampling.py), the continuous-batching scheduler
(serve/scheduler.py), speculative verification (speculative.py: `DecodePlan.process` on every
verified position, `DecodePlan.take` on every accepted token), beam search (beam.py: its
scores are `DecodePlan.process`ed) and the samples a training run prints.

A step, for rows that share one plan:

0. constrain: a row with a structured-output constraint (structured/) gets -inf on every token
   its matcher forbids, its stop ids allowed only once its text is complete; first, before
   any processor, as a -inf commutes with all of them (each row has its own matcher, so rows
   under different constraints share a step);
1. process: the logits processors (processors.py) in their documented order, each row with
   its own history; skipped when every processor is off (`passthrough`), since validating and
   copying the logits costs as much as a small model's forward;
2. choose: argmax when temperature is 0, else one draw per row from softmax, each row with its
   own seeded generator (`draw`: one vectorized inverse-CDF search for the batch);
3. report: the model's own log-probabilities of the chosen tokens (log_softmax of the raw
   logits, before any processor, as vLLM reports them), and the `top_logprobs` alternatives;
4. record: `Row.take` appends the token (advancing the row's matcher), or ends the row on a
   stop id, a stop string, a complete constrained value, `max_new_tokens` or a full context,
   and returns the text that became safe to show.

Determinism: row i of a call with `seed` s draws from a generator seeded with s + (its sample
index), never from a shared stream, so the same prompt and seed give the same text whatever
else is in the batch (on one machine: float results can differ across CPUs and libraries).

Run the tests: `pytest tests/infer/test_step.py lmstack/infer/step.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from lmstack.infer.config import GenerationConfig
from lmstack.infer.structured.constraint import CompiledConstraint, Matcher
from lmstack.infer.processors import ProcessorSettings, process
from lmstack.infer.stopping import find_stop, safe_length
from lmstack.tokenizer.decoder import IncrementalDecoder

TopLogprobs = list[tuple[int, float]]


@dataclass
class Completion:
    """One generated continuation."""

    text: str
    tokens: list[int]                  # generated ids (a final stop id is not included)
    finish_reason: str                 # "stop" or "length"
    prompt_tokens: int
    logprobs: list[float] = field(default_factory=list)          # one per token in `tokens`
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    score: float | None = None         # best-of: mean log-probability; beam: the beam score
    index: int = 0                     # which prompt of the call this answers
    complete: bool | None = None       # under a constraint: the text is a whole sentence of its
                                       # language (False: max_new_tokens cut it short)


@dataclass(eq=False)
class DecodePlan:
    """A request's `GenerationConfig` compiled once for the decode loop: everything a step
    needs, derived here and nowhere else. Build it with `DecodePlan.compile`."""

    cfg: GenerationConfig
    settings: ProcessorSettings
    stop_ids: frozenset[int]           # ids that end a row (eos unless ignore_eos, stop_token_ids)
    ctx: int | None                    # the model's context (None: unbounded)
    passthrough: bool                  # every processor off: `process` would only copy
    greedy: bool
    longest_stop: int                  # characters of the longest stop string
    logprobs: bool                     # compute log-probabilities of the chosen tokens
    top_logprobs: int
    constraint: CompiledConstraint | None = None   # structured output: each row gets a matcher

    @classmethod
    def compile(cls, cfg: GenerationConfig, stop_ids: Sequence[int] = (),
                banned_sequences: list[list[int]] | None = None, ctx: int | None = None,
                constraint: CompiledConstraint | None = None) -> DecodePlan:
        """Derive the plan of `cfg` (already validated); `banned_sequences` are the token
        sequences of its banned words and `constraint` its compiled structured-output
        constraint (the tokenizer, which both need, lives with the engine)."""
        settings = cfg.processor_settings(banned_sequences)
        return cls(cfg, settings, frozenset(stop_ids), ctx, is_passthrough(settings),
                   cfg.temperature == 0, max((len(s) for s in cfg.stop), default=0),
                   cfg.logprobs or cfg.best_of > 1, cfg.top_logprobs, constraint)

    def chooses_like(self, other: DecodePlan) -> bool:
        """Whether rows of both plans pick tokens by the same rules (so one `step` call can
        serve them together): same processors, stop ids and reports; seeds may differ."""
        return self is other or (self.settings == other.settings and self.stop_ids == other.stop_ids
                                 and self.greedy == other.greedy and self.logprobs == other.logprobs
                                 and self.top_logprobs == other.top_logprobs)

    def process(self, logits: torch.Tensor, histories: list[list[int]],
                generated: list[list[int]]) -> torch.Tensor:
        """The processed logits (B, V): `histories` are prompt + generated ids per row,
        `generated` only the generated ones (penalties and min_new_tokens read those)."""
        if self.passthrough:
            return logits
        # validate=False: the settings were checked once, by GenerationConfig.validate
        return process(logits, self.settings, histories, generated, self.stop_ids, validate=False)

    def choose(self, processed: torch.Tensor, generators: Sequence[torch.Generator | None]) -> list[int]:
        """One token per row of processed logits (B, V): argmax, or a draw from softmax."""
        if self.greedy:
            return processed.argmax(-1).tolist()
        return draw(F.softmax(processed, dim=-1), generators)

    def report(self, logits: torch.Tensor, tokens: Sequence[int]) -> list[tuple[float | None, TopLogprobs | None]]:
        """Per row of raw logits (B, V): the chosen token's log-probability and the top
        alternatives, or (None, None) when the request asked for neither."""
        if not self.logprobs:
            return [(None, None)] * len(tokens)
        logp = F.log_softmax(logits.float(), dim=-1)                  # (B, V)
        chosen = logp.gather(-1, torch.tensor(tokens, device=logp.device).unsqueeze(-1))[:, 0].tolist()
        if not self.top_logprobs:
            return [(lp, None) for lp in chosen]
        top = logp.topk(self.top_logprobs, dim=-1)
        return [(lp, list(zip(i, v))) for lp, i, v in zip(chosen, top.indices.tolist(), top.values.tolist())]



def step(logits: torch.Tensor, rows: Sequence[Row]) -> list[str]:
    """THE decode step: choose and record the next token of every row from their next-token
    logits (B, V); return each row's new text. The rows' plans must choose alike
    (`DecodePlan.chooses_like`); each row's own plan still decides when it stops. Raises
    `ConfigError` before recording anything when a row has no allowed token left."""
    plan = rows[0].plan
    masked = constrain(logits, rows)
    processed = masked if plan.passthrough else \
        plan.process(masked, [r.prompt + r.tokens for r in rows], [r.tokens for r in rows])
    chosen = plan.choose(processed, [r.generator for r in rows])
    reports = plan.report(logits, chosen)
    return [row.take(t, lp, top) for row, t, (lp, top) in zip(rows, chosen, reports)]


def constraint_mask(matcher: Matcher, stop_ids: Iterable[int]) -> torch.Tensor:
    """The bool mask (V,) of the ids allowed next in `matcher`'s state: its own mask, plus the
    stop ids once the text is complete (so a user's stop_token_ids end a finished value too)."""
    mask = torch.from_numpy(matcher.allowed().copy())
    stops = list(stop_ids)
    if stops and matcher.is_accepting():
        mask[stops] = True
    return mask


def constrain(logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """The logits (B, V) with -inf wherever a row's constraint forbids the token; the logits
    themselves when no row has one. The mask comes before every processor: a -inf stays -inf
    under all of them, so it commutes with each (processors.py)."""
    if all(r.matcher is None for r in rows):
        return logits
    masks = torch.stack([constraint_mask(r.matcher, r.plan.stop_ids) if r.matcher is not None
                         else torch.ones(logits.size(-1), dtype=torch.bool) for r in rows])
    return logits.masked_fill(~masks.to(logits.device), float("-inf"))


@dataclass
class Row:
    """Decoding state of one row: its plan, what it has generated, how much text it has streamed."""

    prompt: list[int]
    plan: DecodePlan
    generator: torch.Generator | None
    decoder: IncrementalDecoder | None
    index: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    stop_token: int | None = None      # the stop id that ended it, if one did
    stop_logprob: float = 0.0          # and its log-probability (when logprobs are computed)
    text: str = ""
    emitted: int = 0                   # characters of `text` already streamed
    finish_reason: str | None = None
    stop_string: bool = False          # finished by a stop string (its text already cut)
    matcher: Matcher | None = None     # the row's state in its plan's constraint

    def take(self, token: int, logprob: float | None = None, top: TopLogprobs | None = None) -> str:
        """Record the chosen `token`; set `finish_reason` if it ends the row; return the text
        that became safe to show (held back while it could still be the start of a stop string)."""
        plan = self.plan
        cfg = plan.cfg
        if token in plan.stop_ids:
            self.finish_reason, self.stop_token, self.stop_logprob = "stop", token, logprob or 0.0
        else:
            if self.matcher is not None:
                self.matcher.advance(token)
            self._append(token, logprob, top, cfg.stop, plan.longest_stop)
            if self.finish_reason is None and self.matcher is not None and self.matcher.is_terminated():
                self.finish_reason = "stop"  # a complete value: nothing may follow it
            if self.finish_reason is None and (
                    len(self.tokens) >= cfg.max_new_tokens
                    or (plan.ctx is not None and len(self.prompt) + len(self.tokens) >= plan.ctx)):
                self.finish_reason = "length"
        if self.finish_reason is None:
            upto = safe_length(self.text, cfg.stop) if cfg.stop else len(self.text)
        else:
            if self.decoder is not None and not self.stop_string:
                self.text += self.decoder.flush()  # bytes of an unfinished character, as U+FFFD
            upto = len(self.text)
        delta, self.emitted = self.text[self.emitted:upto], max(self.emitted, upto)
        return delta

    def _append(self, token: int, logprob: float | None, top: TopLogprobs | None,
                stops: list[str], longest_stop: int) -> None:
        self.tokens.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        if top is not None:
            self.top_logprobs.append(top)
        if self.decoder is not None:
            # a stop string can only begin in the last `longest_stop` characters before this token
            searched = max(len(self.text) - longest_stop, 0)
            self.text += self.decoder.add(token)
            cut = find_stop(self.text, stops, searched) if stops else None
            if cut is not None:
                self.text, self.finish_reason, self.stop_string = self.text[:cut], "stop", True

    def completion(self) -> Completion:
        """This row as a `Completion`."""
        scored = len(self.logprobs) == len(self.tokens) and (self.logprobs or self.stop_token is not None)
        n = len(self.tokens) + (self.stop_token is not None)
        mean = (sum(self.logprobs) + self.stop_logprob) / max(n, 1) if scored else None
        return Completion(self.text, self.tokens, self.finish_reason or "length", len(self.prompt),
                          self.logprobs, self.top_logprobs, mean, self.index,
                          None if self.matcher is None else self.matcher.is_accepting())


def new_rows(prompts: Sequence[Sequence[int]], plan: DecodePlan, samples: int = 1,
             decoder=None) -> list[Row]:
    """One `Row` per (prompt, sample): sample j of every prompt draws from seed + j.
    `decoder()` makes each row's incremental text decoder (None: no text, ids only)."""
    return [Row(list(p), plan, None if plan.greedy else make_generator(plan.cfg.seed, j),
                decoder() if decoder else None, index=i,
                matcher=None if plan.constraint is None else plan.constraint.matcher())
            for i, p in enumerate(prompts) for j in range(samples)]


def make_generator(seed: int | None, offset: int) -> torch.Generator:
    """A row's own random stream: `seed + offset`, or a seed drawn from torch's global RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        offset = 0
    return torch.Generator().manual_seed(seed + offset)


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> list[int]:
    """One token per row of `probs` (B, V), row i drawn with its own generator: a uniform u from
    generators[i], then inverse-CDF (the first token whose cumulative probability exceeds u).
    One vectorized search for the batch, so batching many seeded rows stays cheap.

    >>> g = [torch.Generator().manual_seed(0), None]
    >>> draw(torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]), g)[0]
    1
    """
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    cdf = probs.double().cumsum(-1)                                   # (B, V)
    total = cdf[:, -1]
    # Strictly below the total, and side="right": never a zero-probability token, even for u
    # at either end of [0, 1).
    target = torch.minimum(u.to(cdf.device) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target.unsqueeze(-1), right=True).squeeze(-1).tolist()


def is_passthrough(settings: ProcessorSettings) -> bool:
    """True when `process` would return an unchanged copy: no processor on and temperature
    0 (greedy) or 1.

    >>> is_passthrough(ProcessorSettings(temperature=0)), is_passthrough(ProcessorSettings(top_k=5))
    (True, False)
    """
    return settings.temperature in (0, 1) and replace(settings, temperature=1.0) == ProcessorSettings()
