"""The decode loop for greedy and ancestral sampling: prefill once, then one token per step
from a preallocated KV cache, for a batch of prompts of different lengths, streaming as it goes.

1. Prefill: the prompts, right-padded to one length, go through the model in ONE forward pass
   with `lengths`, so each row's cache holds only its own tokens and each row continues from its
   own position (models/kv_cache.py). Right padding needs no extra mask in this pass: attention
   is causal, so a real token never sees the pads that follow it.
2. Decode: every step takes the logits of each row's last position, applies the logits
   processors (processors.py, in their documented order), picks a token — argmax when
   temperature is 0, else a draw from softmax with the row's own `torch.Generator` — and feeds
   all the new tokens back as a (B, 1) batch.
3. Stop: a row finishes on <|endoftext|> or a stop id (finish_reason "stop"; the id is not
   returned), on a stop string (text cut where it begins, "stop"), at max_new_tokens or when the
   model's context is full ("length"). Finished rows leave the batch (`cache.select`), so the
   remaining rows get faster.

Determinism: row i of a call with `seed` s draws from a generator seeded with s + (its sample
index), never from a shared stream, so the same prompt and seed give the same text whatever
else is in the batch (on one machine: float results can differ across CPUs and libraries).

`logprobs` are the model's own log-probabilities (log_softmax of its logits, before any
processor), as vLLM reports them; they are what best-of-N ranks by.

Run the tests: `pytest tests/infer/test_generate.py`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.infer.config import GenerationConfig
from lmstack.infer.processors import ProcessorSettings, process
from lmstack.infer.stopping import find_stop, safe_length
from lmstack.tokenizer.decoder import IncrementalDecoder


@dataclass
class Completion:
    """One generated continuation."""

    text: str
    tokens: list[int]                  # generated ids (a final stop id is not included)
    finish_reason: str                 # "stop" or "length"
    prompt_tokens: int
    logprobs: list[float] = field(default_factory=list)          # one per token in `tokens`
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    score: float | None = None         # best-of: mean log-probability; beam: the beam score
    index: int = 0                     # which prompt of the call this answers


@dataclass
class Row:
    """Decoding state of one row: what it has generated and how much text it has streamed."""

    prompt: list[int]
    generator: torch.Generator | None
    decoder: IncrementalDecoder | None
    index: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    stop_token: int | None = None      # the stop id that ended it, if one did
    stop_logprob: float = 0.0          # and its log-probability (when logprobs are computed)
    text: str = ""
    emitted: int = 0                   # characters of `text` already streamed
    finish_reason: str | None = None
    stop_string: bool = False          # finished by a stop string (its text already cut)

    def take(self, token: int, logprob: float | None, top: list[tuple[int, float]] | None,
             cfg: GenerationConfig, stop_ids: set[int], ctx: int | None, longest_stop: int) -> str:
        """Record the chosen `token`; set `finish_reason` if it ends the row; return the text
        that became safe to show (held back while it could still be the start of a stop string)."""
        if token in stop_ids:
            self.finish_reason, self.stop_token, self.stop_logprob = "stop", token, logprob or 0.0
        else:
            self.tokens.append(token)
            if logprob is not None:
                self.logprobs.append(logprob)
            if top is not None:
                self.top_logprobs.append(top)
            if self.decoder is not None:
                searched = max(len(self.text) - longest_stop, 0)
                self.text += self.decoder.add(token)
                cut = find_stop(self.text, cfg.stop, searched) if cfg.stop else None
                if cut is not None:
                    self.text, self.finish_reason, self.stop_string = self.text[:cut], "stop", True
            if self.finish_reason is None and (
                    len(self.tokens) >= cfg.max_new_tokens
                    or (ctx is not None and len(self.prompt) + len(self.tokens) >= ctx)):
                self.finish_reason = "length"
        if self.finish_reason is None:
            upto = safe_length(self.text, cfg.stop) if cfg.stop else len(self.text)
        else:
            if self.decoder is not None and not self.stop_string:
                self.text += self.decoder.flush()  # bytes of an unfinished character, as U+FFFD
            upto = len(self.text)
        delta, self.emitted = self.text[self.emitted:upto], max(self.emitted, upto)
        return delta

    def completion(self) -> Completion:
        """This row as a `Completion`."""
        scored = len(self.logprobs) == len(self.tokens) and (self.logprobs or self.stop_token is not None)
        n = len(self.tokens) + (self.stop_token is not None)
        mean = (sum(self.logprobs) + self.stop_logprob) / max(n, 1) if scored else None
        return Completion(self.text, self.tokens, self.finish_reason or "length", len(self.prompt),
                          self.logprobs, self.top_logprobs, mean, self.index)


def context_length(model) -> int | None:
    """The most positions the model can attend over (None for RNNs and n-grams: unbounded)."""
    return getattr(model.config, "block_size", None)


def check_prompts(prompts: Sequence[Sequence[int]], model) -> None:
    """Raise a clear `ConfigError` for empty prompts and prompts longer than the context."""
    if not prompts:
        raise ConfigError("no prompts given; pass a prompt string or a list of them")
    ctx = context_length(model)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ConfigError(f"prompt {i} is empty; give at least one token (e.g. the "
                              "<|endoftext|> token to generate from scratch)")
        if ctx is not None and len(p) >= ctx:
            raise ConfigError(
                f"prompt {i} has {len(p)} tokens but the model's context is {ctx}: no room to "
                f"generate; shorten the prompt to at most {ctx - 1} tokens (e.g. keep its last "
                f"{ctx - 1})")


def right_pad(prompts: Sequence[Sequence[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids right-padded with `pad`, and the (B,) real lengths.

    >>> right_pad([[1, 2, 3], [4]])
    (tensor([[1, 2, 3],
            [4, 0, 0]]), tensor([3, 1]))
    """
    T = max(len(p) for p in prompts)
    ids = torch.tensor([list(p) + [pad] * (T - len(p)) for p in prompts], dtype=torch.long)
    return ids, torch.tensor([len(p) for p in prompts], dtype=torch.long)


def make_generator(seed: int | None, offset: int) -> torch.Generator:
    """A row's own random stream: `seed + offset`, or a seed drawn from torch's global RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        offset = 0
    return torch.Generator().manual_seed(seed + offset)


@functools.cache
def _takes_last_only(forward: Callable) -> bool:
    """Whether a model's forward accepts `last_only` (GPT does; the protocol does not require it)."""
    return "last_only" in inspect.signature(forward).parameters


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> list[int]:
    """One token per row of `probs` (B, V), row i drawn with its own generator: a uniform u from
    generators[i], then inverse-CDF (the first token whose cumulative probability exceeds u).
    One vectorized search for the batch, so batching many seeded rows stays cheap.

    >>> g = [torch.Generator().manual_seed(0), None]
    >>> draw(torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]), g)[0]
    1
    """
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1]
    # Strictly below the total, and side="right": never a zero-probability token, even for u
    # at either end of [0, 1).
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target.unsqueeze(-1), right=True).squeeze(-1).tolist()


def is_passthrough(settings: ProcessorSettings) -> bool:
    """True when `process` would return an unchanged copy: no processor on and temperature
    0 (greedy) or 1."""
    return settings.temperature in (0, 1) and replace(settings, temperature=1.0) == ProcessorSettings()


@torch.inference_mode()
def prefill(model, prompts: Sequence[Sequence[int]], extra: int, prefix_cache=None):
    """Run the prompts through the model into a fresh cache; return (cache, last logits (B, V)).
    With a `PrefixCache` (prefix_cache.py), prefixes computed before are reused."""
    ctx = context_length(model)
    if prefix_cache is not None and prefix_cache.supports(model):
        return prefix_cache.prefill(model, prompts, extra, ctx)
    longest = max(len(p) for p in prompts)
    max_len = longest + max(extra, 1)
    cache = model.new_cache(len(prompts), max_len if ctx is None else min(ctx, max_len))
    device = next((p.device for p in model.parameters()), torch.device("cpu")) \
        if hasattr(model, "parameters") else torch.device("cpu")
    ids, lengths = right_pad(prompts)
    ragged = bool((lengths != longest).any())
    if _takes_last_only(type(model).forward):
        # Only each row's last logits are needed: skip the vocabulary head over the other
        # positions (for a 512-token GPT-2 prompt, ~40 of the forward's ~130 GFLOP).
        logits = model(ids.to(device), cache=cache, lengths=lengths if ragged else None, last_only=True)
        return cache, logits[:, -1].float()
    logits = model(ids.to(device), cache=cache, lengths=lengths if ragged else None)
    last = logits[torch.arange(len(prompts)), (lengths - 1).to(logits.device)]
    return cache, last.float()


@torch.inference_mode()  # not just no_grad: also skips autograd's version counters on every op
def decode(model, rows: list[Row], cfg: GenerationConfig, stop_ids: set[int],
           banned_sequences: list[list[int]] | None = None, prefix_cache=None) -> Iterator[tuple[Row, str]]:
    """Generate for every row; yield (row, new text) as text becomes safe to show, and once
    more with the rest of the text (maybe "") when the row finishes (`row.finish_reason` set)."""
    settings = cfg.processor_settings(banned_sequences)
    # With every processor off `process` would only validate and copy the logits each step,
    # which costs as much as a small model's forward: skip it.
    passthrough = is_passthrough(settings)
    ctx = context_length(model)
    greedy = cfg.temperature == 0
    longest_stop = max((len(s) for s in cfg.stop), default=0)
    if cfg.max_new_tokens == 0:
        for row in rows:
            row.finish_reason = "length"
            yield row, ""
        return
    cache, logits = prefill(model, [r.prompt for r in rows], cfg.max_new_tokens, prefix_cache)
    active = list(rows)
    while active:
        if passthrough:
            processed = logits
        else:
            histories = [r.prompt + r.tokens for r in active]
            processed = process(logits, settings, histories, [r.tokens for r in active], stop_ids,
                                validate=False)  # checked once, by GenerationConfig.validate
        if greedy:
            chosen = processed.argmax(-1).tolist()
        else:
            chosen = draw(F.softmax(processed, dim=-1), [r.generator for r in active])
        logp = F.log_softmax(logits, dim=-1) if cfg.logprobs or cfg.best_of > 1 else None
        tops = logp.topk(cfg.top_logprobs, dim=-1) if logp is not None and cfg.top_logprobs else None
        keep = []
        for i, (row, token) in enumerate(zip(active, chosen)):
            top = None if tops is None else list(zip(tops.indices[i].tolist(), tops.values[i].tolist()))
            delta = row.take(token, float(logp[i, token]) if logp is not None else None, top,
                             cfg, stop_ids, ctx, longest_stop)
            if row.finish_reason is None:
                keep.append(i)
            if delta or row.finish_reason is not None:
                yield row, delta
        if len(keep) < len(active):
            if not keep:
                break
            cache.select(keep)
        active = [active[i] for i in keep]
        x = torch.tensor([[active_row.tokens[-1]] for active_row in active], dtype=torch.long)
        logits = model(x.to(logits.device), cache=cache)[:, -1].float()


def new_rows(prompts: Sequence[Sequence[int]], cfg: GenerationConfig, samples: int,
             make_decoder: Callable[[], IncrementalDecoder] | None) -> list[Row]:
    """One `Row` per (prompt, sample): sample j of every prompt draws from seed + j."""
    return [Row(list(p), None if cfg.temperature == 0 else make_generator(cfg.seed, j),
                make_decoder() if make_decoder else None, index=i)
            for i, p in enumerate(prompts) for j in range(samples)]
