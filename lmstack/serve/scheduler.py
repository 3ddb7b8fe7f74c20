"""Continuous batching: many requests share one model, joining and leaving between decode steps.

Static batching waits for a whole batch to finish before the next one starts, so one long
reply holds every short one hostage. Iteration-level scheduling (Orca, Yu et al. 2022; the
scheduler of vLLM, Kwon et al. 2023) instead decides at every decode step:

1. admit: waiting requests join while the batch has free rows (`max_batch`). They are
   prefilled together in one forward pass into a cache of their own, which is then appended to
   the running cache (`cache.extend`): every row keeps its own length and position, so rows
   that joined at different times decode side by side (models/kv_cache.py, ragged rows).
2. decode: one forward pass over the last token of every running row, then the one decode
   step (infer/step.py), the same as `Engine.generate`'s, chooses and records each row's
   token with its own settings (temperature, top-p, penalties...) and its own seeded
   generator; so stop strings, UTF-8-safe streaming, finish reasons and seeded samples are
   identical to `Engine.generate`. Rows whose plans choose alike share one step call
   (batched processors, one vectorized draw), because per-row Python costs as much as the
   forward pass of a small model.
3. retire: finished rows and rows whose client went away (`Request.cancel`) leave the batch
   (`cache.select`) at once, freeing their row for the next waiting request.

Speculative decoding (`speculative=`, a SpeculativeDecoder: Leviathan et al. 2023; Chen et al.
2023): every row gets its own copy of the drafter, which proposes up to gamma tokens after the
row's last token; the step's one forward pass reads each row's last token *and its drafts*
(right-padded; each row's cache advances by its own length), so the next step has the logits
after every draft. A row with drafts is verified alone (`verify_round`: the exact acceptance
rule, each position through the row's own plan, kept tokens through `Row.take`) and may gain
several tokens; rows without drafts take the batched step above; then `cache.crop` forgets
each row's rejected drafts. Greedy and sampled rows both speculate (that is every request the
scheduler takes); the first token of a request comes from its prefill, undrafted.

LoRA adapters (`submit(..., variant=)`): each request names the variant of the model it runs
(infer/variants.py: 0 the base, 1..N the adapters `lmstack serve --lora` attached); every
prefill and forward pass tells the model each row's variant, so rows of different adapters
share a batch (posttrain/peft/multi_lora.py adds each row's own update).

The queue of waiting requests is bounded (`max_queue`); `submit` raises `QueueFull` when it is
full, which the server answers with HTTP 429. All model work runs on one background thread
under `torch.inference_mode`; results go back through each request's `on_event` callback (the
server turns them into server-sent events). A prefill of a long prompt pauses the decoding
rows for its duration (no chunked prefill yet).

    from lmstack.infer import Engine
    from lmstack.serve.scheduler import Scheduler
    engine = Engine.load("runs/quickstart")
    with Scheduler(engine, max_batch=8) as scheduler:
        request = scheduler.submit(engine.encode("import os"), engine.config(max_new_tokens=20),
                                   on_event=print)
        request.done.wait()

Tests: `pytest tests/serve/test_scheduler.py`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError, LMStackError
from lmstack.infer.config import GenerationConfig
from lmstack.infer.drafters import Drafter, Round
from lmstack.infer.sampling import check_prompts, context_length, prefill
from lmstack.infer.speculative import draft_count, row_cache_length, verify_round
from lmstack.infer.step import Row, new_rows, step
from lmstack.infer.variants import row_variants, running

log = logging.getLogger("lmstack.serve")


class QueueFull(LMStackError):
    """The scheduler's waiting queue is full; retry later (HTTP 429)."""


@dataclass
class Event:
    """What one sample of a request produced since its previous event."""

    sample: int                        # which of the request's n samples
    text: str                          # new text, safe to show (never part of a stop string)
    tokens: list[int]                  # ids generated since the previous event
    logprobs: list[float]              # their log-probabilities (when asked for)
    top_logprobs: list[list[tuple[int, float]]]
    finish_reason: str | None = None   # "stop" or "length" on the sample's last event
    stop_token: int | None = None      # the end-of-text/stop id that finished it (never in tokens)
    error: str | None = None           # set when the request failed inside the scheduler
    score: float | None = None         # last event: the sample's mean log-probability, when
                                       # log-probabilities were computed (best-of's default rank)


@dataclass
class Request:
    """A submitted prompt and its n samples; `cancel()` drops it from the batch."""

    id: int
    prompt: list[int]
    cfg: GenerationConfig
    n: int
    on_event: Callable[[Event], None]
    variant: int = 0                   # which of the model's variants runs it (a LoRA adapter)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None   # perf_counter time of the first generated token
    generated: int = 0                 # tokens generated over all samples
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    _open: int = 0                     # samples still running

    def cancel(self) -> None:
        """Stop generating for this request (the client went away); its rows leave at once."""
        self.cancelled = True


@dataclass
class _Sequence:
    """One running row: a sample of a request (the row holds the plan its tokens are chosen by)."""

    request: Request
    sample: int
    row: Row
    sent: int = 0                      # tokens of row.tokens already reported
    drafter: Drafter | None = None     # when the server speculates: this row's own drafter
    drafts: list[int] = field(default_factory=list)   # proposed, in the forward now pending
    q: torch.Tensor | None = None      # (len(drafts), V) the draft distributions, if drawn
    hidden: torch.Tensor | None = None  # (1 + len(drafts), C) the target's, for Medusa
    accepted: int = 0                  # drafts the last step kept


class Scheduler:
    """Iteration-level scheduling of generation requests over one model (see module docstring)."""

    def __init__(self, engine, max_batch: int = 8, max_queue: int = 64, speculative=None) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ConfigError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.engine, self.model = engine, engine.model
        # A SpeculativeDecoder over this engine (speculative.py), or None: its drafter is
        # cloned for every row, its gamma caps each row's drafts.
        self.speculative = speculative
        self.proposed = self.accepted = 0             # draft tokens verified, and kept
        self.max_batch, self.max_queue = max_batch, max_queue
        self._waiting: deque[Request] = deque()
        self._running: list[_Sequence] = []
        self._cache = None
        self._logits: torch.Tensor | None = None     # (B, T, V): after each row's last token and drafts
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._closed = False
        self._thread: threading.Thread | None = None
        self.steps = 0                                # decode steps taken (for metrics and tests)

    # ---- the client side (any thread) ------------------------------------------------------

    def submit(self, prompt: list[int], cfg: GenerationConfig, on_event: Callable[[Event], None],
               n: int = 1, variant: int = 0) -> Request:
        """Queue a prompt for `n` samples, run by the model's `variant` (infer/variants.py: a
        LoRA adapter; 0 the model as loaded); raise `QueueFull` if the queue is full."""
        if cfg.strategy not in ("greedy", "sample"):
            raise ConfigError(f"the scheduler runs greedy decoding and sampling, not {cfg.strategy}; "
                              "use Engine.generate for beam search and best-of")
        if not 1 <= n <= self.max_batch:
            raise ConfigError(f"n must be between 1 and {self.max_batch} (the batch size), got {n}")
        check_prompts([prompt], self.model)
        variants = row_variants(self.model)
        if not 0 <= variant <= (len(variants.names) if variants is not None else 0):
            raise ConfigError(f"variant {variant} is not one this model has loaded")
        request = Request(next(self._ids), list(prompt), cfg, n, on_event, variant=variant, _open=n)
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"too many requests waiting ({len(self._waiting)}); retry shortly")
            self._waiting.append(request)
            self._cond.notify()
        return request

    def stats(self) -> dict[str, int]:
        """Rows running, requests waiting, and decode steps taken so far (with speculation: draft
        tokens proposed and accepted too)."""
        with self._cond:
            out = {"running": len(self._running), "waiting": len(self._waiting), "steps": self.steps}
        if self.speculative is not None:
            out.update(proposed=self.proposed, accepted=self.accepted)
        return out

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Scheduler:
        """Start the background thread that runs the model."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lmstack-scheduler", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; unfinished requests end with an error event."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for seq in self._running:
            self._fail(seq.request, "the server shut down")
        while self._waiting:
            self._fail(self._waiting.popleft(), "the server shut down")
        self._running, self._cache, self._logits = [], None, None

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._running or self._waiting or self._closed):
                        self._cond.wait()
                    if self._closed:
                        return
                try:
                    self.step()
                except Exception as e:  # noqa: BLE001 — a bug must fail requests, not the server
                    log.exception("scheduler step failed")
                    for seq in self._running:
                        self._fail(seq.request, f"internal error while generating: {type(e).__name__}")
                    self._running, self._cache, self._logits = [], None, None

    # ---- one iteration (the model thread) ----------------------------------------------------

    def step(self) -> None:
        """Admit waiting requests, choose the next token(s) of every running row, retire finished
        rows, and run the forward pass for the next step."""
        self._admit()
        if not self._running:
            return
        live = []
        for i, seq in enumerate(self._running):
            if seq.request.cancelled:
                self._close_sample(seq)
            else:
                live.append(i)
        failed: set[int] = set()
        for group in self._groups([i for i in live if not self._running[i].drafts]):
            failed |= self._step_group(group)
        for i in live:  # rows with drafts: verified one by one (each keeps its own number)
            if self._running[i].drafts:
                failed |= self._step_drafted(i)
        keep = [i for i in live if i not in failed and self._running[i].row.finish_reason is None]
        if len(keep) < len(self._running):
            self._running = [self._running[i] for i in keep]
            if not keep:
                self._cache, self._logits = None, None
                return
            self._cache.select(keep)
        if self.speculative is not None:
            self._draft()
        self._forward()
        self.steps += 1

    def _forward(self) -> None:
        """One forward pass over every row's last token and its drafts (right-padded, each row
        advancing its cache by its own length): the logits the next step chooses from."""
        inputs = [[s.row.tokens[-1]] + s.drafts for s in self._running]
        T = max(map(len, inputs))
        device = self._logits.device
        x = torch.tensor([ids + [0] * (T - len(ids)) for ids in inputs], device=device)   # (B, T)
        ragged = {"lengths": torch.tensor(list(map(len, inputs)))} if T > 1 else {}
        with running(self.model, [s.request.variant for s in self._running]):  # each row its adapter
            if self.speculative is not None and self.speculative.drafter.uses_hidden:
                hidden = self.model.hidden(x, cache=self._cache, **ragged)                  # (B, T, C)
                for seq, h in zip(self._running, hidden):
                    seq.hidden = h
                self._logits = self.model.lm_head(hidden).float()                           # (B, T, V)
            else:
                self._logits = self.model(x, cache=self._cache, **ragged).float()           # (B, T, V)

    def _draft(self) -> None:
        """Speculation: forget the rejected drafts in the target's cache, tell each row's drafter
        what was kept, and ask it for the next drafts (speculative.py's round, per row)."""
        rows = [s.row for s in self._running]
        # the cache holds every token but each row's last (which the next forward feeds)
        self._cache.crop(torch.tensor([len(r.prompt) + len(r.tokens) - 1 for r in rows]))
        # Right padding writes every row T slots on from its own length: the longest row
        # bounds the drafts of all (only near the end of the cache or the context).
        room = min(self._cache.max_len, context_length(self.model)) - self._cache.length - 1
        gamma = min(self.speculative.gamma, room)
        for seq, row in zip(self._running, rows):
            ids = row.prompt + row.tokens
            if seq.hidden is not None or not seq.drafter.uses_hidden:  # Medusa: not before its first pass
                seq.drafter.commit(ids, None if seq.hidden is None else seq.hidden[seq.accepted])
            n = draft_count(row, gamma, seq.drafter)
            seq.drafts, seq.q = seq.drafter.propose(ids, n) if n > 0 else ([], None)

    def _admit(self) -> None:
        """Move waiting requests into the batch while their samples fit; prefill them together."""
        new: list[_Sequence] = []
        with self._cond:
            while self._waiting and len(self._running) + len(new) + self._waiting[0].n <= self.max_batch:
                request = self._waiting.popleft()
                if request.cancelled:
                    self._fail(request, None)
                    continue
                new.extend(self._sequences(request))
        if not new:
            return
        # max_new_tokens == 0: nothing to generate.
        empty = [s for s in new if s.request.cfg.max_new_tokens == 0]
        for seq in empty:
            seq.row.finish_reason = "length"
            self._emit(seq)
        new = [s for s in new if s.request.cfg.max_new_tokens > 0]
        if not new:
            return
        extra = max(s.request.cfg.max_new_tokens for s in new)
        if self.speculative is not None:  # one round of drafts beyond the last token
            extra += self.speculative.gamma + 1
        try:
            cache, logits = prefill(self.model, [s.row.prompt for s in new], extra, self.engine.prefix_cache,
                                    [s.request.variant for s in new])
        except Exception as e:  # noqa: BLE001 — these requests are in neither list: end them here
            log.exception("prefill failed")
            for seq in new:
                self._fail(seq.request, f"internal error while reading the prompt: {type(e).__name__}")
            return
        logits = logits.unsqueeze(1)                                           # (B_new, 1, V)
        if self._cache is None:
            self._cache, self._logits = cache, logits
        else:
            self._cache.extend(cache)
            pad = self._logits.size(1) - 1  # the running rows' drafts: new rows have none
            self._logits = torch.cat([self._logits, F.pad(logits, (0, 0, 0, pad)) if pad else logits])
        self._running.extend(new)

    def _sequences(self, request: Request) -> list[_Sequence]:
        plan = self.engine.plan(request.cfg)   # compiled once, for all n samples
        rows = new_rows([request.prompt], plan, request.n, self.engine.new_decoder)
        seqs = [_Sequence(request, j, row) for j, row in enumerate(rows)]
        if self.speculative is not None:
            for seq in seqs:
                seq.drafter = self.speculative.drafter.clone()
                seq.drafter.start(Round(plan, seq.row, row_cache_length(seq.row, self.speculative.gamma)))
        return seqs

    def _groups(self, rows: list[int]) -> list[list[int]]:
        """Running rows that choose alike (`DecodePlan.chooses_like`), so that each group goes
        through the processors in one batched call (their cost is per call more than per row);
        each row still draws from its own generator."""
        groups: list[list[int]] = []
        for i in rows:
            plan = self._running[i].row.plan
            for group in groups:
                if plan.chooses_like(self._running[group[0]].row.plan):
                    group.append(i)
                    break
            else:
                groups.append([i])
        return groups

    def _step_group(self, group: list[int]) -> set[int]:
        """The decode step (step.py) for one group; return the rows that failed (e.g. every
        token banned for that row), after ending their requests with the error."""
        seqs = [self._running[i] for i in group]
        try:
            deltas = step(self._logits[group, 0], [s.row for s in seqs])
        except LMStackError as e:
            if len(group) > 1:  # find the row(s) at fault, so the others go on
                return set().union(*(self._step_group([i]) for i in group))
            seqs[0].request.cancel()
            self._fail(seqs[0].request, str(e))
            return set(group)
        for seq, delta in zip(seqs, deltas):
            seq.accepted = 0
            self._advance(seq, delta)
        return set()

    def _step_drafted(self, i: int) -> set[int]:
        """Verify row i's drafts against the target's logits after each of them (speculative.py:
        exact for greedy and sampling, through the row's own plan); return {i} if it failed."""
        seq = self._running[i]
        k = len(seq.drafts)
        try:
            seq.accepted, delta = verify_round(seq.row, self._logits[i, :k + 1], seq.drafts, seq.q)
        except LMStackError as e:
            seq.request.cancel()
            self._fail(seq.request, str(e))
            return {i}
        self.proposed += k
        self.accepted += seq.accepted
        self._advance(seq, delta)
        return set()

    def _advance(self, seq: _Sequence, delta: str) -> None:
        """Count the tokens this step recorded for `seq` (one, or several when drafts were
        accepted; a final stop id counts); emit what became visible."""
        row, request = seq.row, seq.request
        new = len(row.tokens) - seq.sent + (row.stop_token is not None)
        if new:
            request.generated += new
            if request.first_token is None:
                request.first_token = time.perf_counter()
        if delta or row.finish_reason is not None or len(row.tokens) > seq.sent:
            self._emit(seq, delta)

    def _emit(self, seq: _Sequence, text: str = "") -> None:
        row, start = seq.row, seq.sent
        seq.sent = len(row.tokens)
        done = row.finish_reason is not None
        event = Event(seq.sample, text, row.tokens[start:], row.logprobs[start:],
                      row.top_logprobs[start:], row.finish_reason, row.stop_token,
                      score=row.completion().score if done else None)
        self._deliver(seq.request, event)
        if done:
            self._close_sample(seq)

    def _close_sample(self, seq: _Sequence) -> None:
        seq.request._open -= 1
        if seq.request._open <= 0:
            seq.request.done.set()

    def _deliver(self, request: Request, event: Event) -> None:
        try:
            request.on_event(event)
        except Exception:  # noqa: BLE001 — a broken consumer must not stop the batch
            log.exception("on_event of request %d failed; cancelling it", request.id)
            request.cancel()

    def _fail(self, request: Request, message: str | None) -> None:
        """End a request early: an error event (unless it was cancelled), then done."""
        if message is not None and not request.done.is_set():
            self._deliver(request, Event(0, "", [], [], [], None, error=message))
        request._open = 0
        request.done.set()
