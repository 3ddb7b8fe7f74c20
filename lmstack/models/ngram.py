"""The count-based n-gram language model, the classic baseline every neural LM must beat.

P(w | the previous n-1 tokens) is read off counts of what followed those tokens in the training
data (Shannon 1948; Jurafsky & Martin, ch. 3). Raw ratios give zero probability to anything
unseen, so counts are smoothed:

- "add_k" (Lidstone): P(w | h) = (c(h w) + k) / (c(h) + k·V). An unseen context gives 1/V.
- "kneser_ney", interpolated (Kneser & Ney 1995; Chen & Goodman 1998, eq. 17): subtract a
  discount D from every seen count and give the mass freed to the next-lower order:
      P(w | h) = max(c(h w) - D, 0) / c(h)  +  D · N1+(h •) / c(h) · P(w | h minus its first token)
  where N1+(h •) is how many different tokens followed h. Below the top order, c(·) is the
  *continuation* count N1+(• h w), the number of different tokens seen before h w: "Francisco"
  is frequent but follows only "San", so it is a poor guess after an unseen context. The chain
  ends in the uniform 1/V, so every token keeps some probability, and an unseen context backs
  off entirely. D per order is n1 / (n1 + 2·n2) from the counts of counts (Ney et al. 1994),
  unless `discount` fixes it.

Storage is an array form of "dictionary of dicts": for each order m, the distinct m-grams as
sorted int64 keys `context_id · V + token`, where context_id is the (m-1)-gram's index in the
order below — a trie in flat numpy arrays, so fitting ~1M tokens is a few `np.unique` calls and
lookups are `np.searchsorted`. n-grams never span two training sequences.

The language model protocol holds (protocol.py): `model(idx)` returns log-probabilities as
logits (B, T, V), position t conditioned on tokens max(0, t-n+2)..t of its row (shorter contexts
near the start); the decoding cache (`NGramState`) holds each row's last n-1 tokens.

    >>> lm = NGramLM(NGramConfig(vocab_size=3, order=2, smoothing="add_k", k=1.0))
    >>> lm = lm.fit([[0, 1, 0, 1, 0, 2]])
    >>> lm.counts([0])                  # after 0: 1 twice, 2 once
    {1: 2, 2: 1}
    >>> lm.prob([0], 1)                 # (2 + 1) / (3 + 1·3)
    0.5
    >>> lm.prob([2], 0)                 # 2 was never followed: uniform 1/3
    0.3333333333333333
    >>> kn = NGramLM(NGramConfig(vocab_size=3, order=2, discount=0.5)).fit([[0, 1, 0, 1, 0, 2]])
    >>> # unigram: each token has 1 distinct predecessor out of 3: (1 - .5)/3 + .5·3/3·(1/3) = 1/3
    >>> round(kn.prob([], 1), 4)
    0.3333
    >>> # bigram: (2 - .5)/3 + .5·2/3·(1/3) = 0.5 + 0.1111
    >>> round(kn.prob([0], 1), 4), round(kn.prob([0], 2), 4), round(kn.prob([0], 0), 4)
    (0.6111, 0.2778, 0.1111)

Run the tests: `pytest tests/models/test_ngram.py`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmstack.errors import ConfigError, DataError
from lmstack.models.config import ModelConfig, require, require_choice
from lmstack.models.protocol import check_idx, last_positions

SMOOTHINGS = ("add_k", "kneser_ney")


@dataclass
class NGramConfig(ModelConfig):
    """An n-gram model: order, vocabulary and smoothing."""

    vocab_size: int = 256
    order: int = 3                   # n: condition on the previous n-1 tokens
    smoothing: str = "kneser_ney"    # "kneser_ney" (interpolated) or "add_k"
    k: float = 1.0                   # add_k's pseudo-count (> 0; 1 = Laplace)
    discount: float | None = None    # Kneser-Ney D in (0, 1]; None = n1 / (n1 + 2·n2) per order

    model_types = ("ngram",)

    @property
    def model_type(self) -> str:
        return "ngram"

    def validate(self) -> None:
        require(self.vocab_size >= 1, f"vocab_size must be at least 1, got {self.vocab_size}")
        require(self.order >= 1, f"order must be at least 1 (1 = unigram), got {self.order}")
        require_choice("smoothing", self.smoothing, SMOOTHINGS)
        require(self.k > 0, f"k {self.k} must be positive; add-k with k = 0 gives unseen tokens probability 0")
        require(self.discount is None or 0 < self.discount <= 1,
                f"discount {self.discount} must be in (0, 1], or null to estimate it")


@dataclass
class _Order:
    """Everything about the m-grams of one order that probability lookups need."""

    keys: np.ndarray       # sorted distinct m-grams as context_id · V + token
    counts: np.ndarray     # raw count of each m-gram
    token: np.ndarray      # keys % V
    start: np.ndarray      # context c's m-grams are keys[start[c]:start[c + 1]]
    raw_total: np.ndarray  # per context: sum of raw counts (add-k's c(h))
    weight: np.ndarray     # per m-gram: KN's max(c - D, 0) / c(h)
    backoff: np.ndarray    # per context: KN's D · N1+(h •) / c(h), or 1 if c(h) = 0
    discount: float


class NGramState:
    """Decoding state of an `NGramLM`: each row's last n-1 tokens."""

    def __init__(self, batch_size: int, order: int) -> None:
        # One array per row: rows of a batch may have seen different numbers of tokens.
        self.tokens = [np.zeros(0, dtype=np.int64) for _ in range(batch_size)]
        self.order = order
        self.length = 0

    @property
    def batch_size(self) -> int:
        """Rows the state holds."""
        return len(self.tokens)

    def select(self, rows: torch.Tensor | list[int]) -> None:
        """Keep only these rows, in this order (repeats allowed): beam reordering, finished rows."""
        self.tokens = [self.tokens[int(i)] for i in rows]

    def extend(self, other: NGramState) -> None:
        """Append the rows of `other` after these (requests joining a running batch)."""
        self.tokens = self.tokens + other.tokens
        self.length = max(self.length, other.length)

    @property
    def max_len(self) -> None:
        """Only n-1 tokens are kept, so the state never fills up."""
        return None

    def reset(self) -> None:
        """Forget all history."""
        self.tokens, self.length = [t[:0] for t in self.tokens], 0


def _lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query in the sorted `keys`, or -1 where absent."""
    pos = np.searchsorted(keys, query)
    pos_ok = np.minimum(pos, max(len(keys) - 1, 0))
    found = (pos < len(keys)) & (keys[pos_ok] == query) if len(keys) else np.zeros(query.shape, bool)
    return np.where(found, pos, -1)


def _flatten(sequences: Any) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all sequences end to end, and each token's position within its sequence."""
    if isinstance(sequences, torch.Tensor):
        sequences = sequences.cpu().numpy()
    if isinstance(sequences, np.ndarray):
        seqs = [sequences] if sequences.ndim == 1 else list(sequences)
    elif isinstance(sequences, Sequence) and len(sequences) and np.ndim(sequences[0]) == 0:
        seqs = [np.asarray(sequences)]  # a flat list of ids is one sequence
    else:
        seqs = [np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s) for s in sequences]
    seqs = [s.astype(np.int64).ravel() for s in seqs if len(s)]
    if not seqs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    toks = np.concatenate(seqs)
    lengths = np.array([len(s) for s in seqs])
    where = np.arange(len(toks)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return toks, where


class NGramLM(nn.Module):
    """Count-based n-gram LM (add-k or interpolated Kneser-Ney); no parameters, fit by counting."""

    config_class = NGramConfig

    def __init__(self, config: NGramConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else NGramConfig()
        empty = np.zeros(0, dtype=np.int64)
        self._tables(counts=[(empty, empty)] * self.config.order, continuation=[empty] * (self.config.order - 1))

    # ---- fitting -------------------------------------------------------------------------

    def fit(self, sequences: Iterable[Sequence[int]] | np.ndarray | torch.Tensor) -> NGramLM:
        """Count n-grams of every order in `sequences` (replacing earlier counts); returns self.

        `sequences` is an iterable of id sequences, one 1-D array/list (one sequence), or a
        2-D array/tensor (one sequence per row)."""
        V, n = self.config.vocab_size, self.config.order
        toks, where = _flatten(sequences)
        if len(toks) == 0:
            raise DataError("n-gram fit got no tokens; pass a non-empty corpus of token ids")
        if toks.min() < 0 or toks.max() >= V:
            bad = toks.min() if toks.min() < 0 else toks.max()
            raise DataError(f"token id {bad} is out of range for vocab_size {V}; set vocab_size to the tokenizer's")
        counts, continuation = [], []
        prev = np.zeros(len(toks), dtype=np.int64)  # id of the (m-1)-gram ending at each position
        for m in range(1, n + 1):
            valid = where >= m - 1                    # an m-gram ends here without crossing a start
            context = np.zeros(len(toks), dtype=np.int64) if m == 1 else np.roll(prev, 1)
            keys, first, inverse, count = np.unique(
                context[valid] * V + toks[valid], return_index=True, return_inverse=True, return_counts=True)
            if m > 1:
                # Continuation count of each (m-1)-gram: the distinct m-grams it ends, i.e. the
                # distinct tokens seen before it. The suffix of an m-gram ending at i is the
                # (m-1)-gram ending at i.
                suffix = prev[np.flatnonzero(valid)[first]]
                continuation.append(np.bincount(suffix, minlength=len(counts[-1][0])))
            counts.append((keys, count))
            prev = np.full(len(toks), -1, dtype=np.int64)
            prev[valid] = inverse.ravel()
        self._tables(counts, continuation)
        return self

    def _tables(self, counts: list[tuple[np.ndarray, np.ndarray]], continuation: list[np.ndarray]) -> None:
        """Derive the lookup arrays of every order from raw and continuation counts."""
        V, n = self.config.vocab_size, self.config.order
        self.orders: list[_Order] = []
        for m in range(1, n + 1):
            keys, raw = counts[m - 1]
            n_contexts = 1 if m == 1 else len(counts[m - 2][0])
            context = keys // V
            # Kneser-Ney uses raw counts at the top order and continuation counts below it.
            kn = raw if m == n else continuation[m - 1]
            total = np.bincount(context, weights=kn, minlength=n_contexts)
            distinct = np.bincount(context, weights=kn > 0, minlength=n_contexts)
            discount = self.config.discount or self._estimate_discount(kn)
            seen = total > 0
            safe_total = np.where(seen, total, 1.0)
            self.orders.append(_Order(
                keys=keys, counts=raw, token=keys % V,
                start=np.searchsorted(context, np.arange(n_contexts + 1)),
                raw_total=np.bincount(context, weights=raw, minlength=n_contexts),
                weight=np.maximum(kn - discount, 0) / safe_total[context],
                backoff=np.where(seen, discount * distinct / safe_total, 1.0),
                discount=discount,
            ))
        self._continuation = continuation
        unigram = self.orders[0]
        self._unigram = np.full(V, unigram.backoff[0] / V)
        self._unigram[unigram.token] += unigram.weight

    @staticmethod
    def _estimate_discount(counts: np.ndarray) -> float:
        """Ney et al.'s D = n1 / (n1 + 2·n2) from how many n-grams occur once and twice."""
        n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
        return n1 / (n1 + 2 * n2) if n1 > 0 else 0.75  # no singletons: a customary default

    # ---- probabilities -------------------------------------------------------------------

    def _contexts(self, toks: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For predicting the token after each position: context ids per order, and max order.

        Column m-1 of the first result is the index of the (m-1)-gram ending at that position
        in order m-1's table (order m's context), -1 if unseen; column 0 is the empty context."""
        V, n = self.config.vocab_size, self.config.order
        ctx = np.full((len(toks), n), -1, dtype=np.int64)
        ctx[:, 0] = 0
        for j in range(1, n):
            parent = np.zeros(len(toks), np.int64) if j == 1 else np.roll(ctx[:, j - 1], 1)
            parent[where < j - 1] = -1  # the j-gram ending here would cross the sequence start
            ids = _lookup(self.orders[j - 1].keys, parent * V + toks)
            ctx[:, j] = np.where(parent >= 0, ids, -1)
        return ctx, np.minimum(n, where + 2)

    def _distributions(self, ctx: np.ndarray, max_order: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
        """Full next-token distributions (R, V) for R rows of context ids."""
        V = self.config.vocab_size
        R = len(ctx)
        kneser_ney = self.config.smoothing == "kneser_ney"
        # Kneser-Ney's order 1 (the empty context) is the same for every row: computed once.
        first = 2 if kneser_ney else 1
        start = self._unigram if kneser_ney else np.full(V, 1.0 / V)
        probs = np.repeat(start[None].astype(dtype), R, axis=0)
        for m, table in enumerate(self.orders[first - 1:], start=first):
            if kneser_ney:
                rows = np.flatnonzero((ctx[:, m - 1] >= 0) & (max_order >= m))
                c = ctx[rows, m - 1]
                probs[rows] *= table.backoff[c, None]       # the mass left for lower orders...
                self._scatter(probs, rows, c, table, table.weight)  # ...plus discounted counts
            else:
                # add-k uses only the longest available context; unseen contexts stay uniform.
                rows = np.flatnonzero((max_order == m) & (ctx[:, m - 1] >= 0))
                c = ctx[rows, m - 1]
                denom = table.raw_total[c] + self.config.k * V
                probs[rows] = (self.config.k / denom)[:, None]
                self._scatter(probs, rows, c, table, table.counts, scale=1.0 / denom)
        return probs

    @staticmethod
    def _scatter(probs: np.ndarray, rows: np.ndarray, contexts: np.ndarray, table: _Order,
                 values: np.ndarray, scale: np.ndarray | None = None) -> None:
        """probs[row, token] += values[gram] (· scale[row]) for every m-gram of each row's context."""
        starts, ends = table.start[contexts], table.start[contexts + 1]
        lengths = ends - starts
        offsets = np.cumsum(lengths) - lengths
        gram = np.arange(lengths.sum()) - np.repeat(offsets - starts, lengths)
        add = values[gram] if scale is None else values[gram] * np.repeat(scale, lengths)
        # A context's m-grams have distinct tokens, so no (row, token) pair repeats.
        probs[np.repeat(rows, lengths), table.token[gram]] += add

    def _token_probs(self, ctx: np.ndarray, max_order: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """P(tokens[r] | context r) (R,) without building full distributions."""
        V, k = self.config.vocab_size, self.config.k
        probs = np.full(len(ctx), 1.0 / V)
        for m, table in enumerate(self.orders, start=1):
            if not len(table.backoff):
                continue  # no contexts of this length were seen at all
            c = ctx[:, m - 1]
            gram = _lookup(table.keys, np.where(c >= 0, c, 0) * V + tokens)
            gram_ok = np.maximum(gram, 0)
            if self.config.smoothing == "kneser_ney":
                use = (c >= 0) & (max_order >= m)
                added = np.where(gram >= 0, table.weight[gram_ok] if len(table.keys) else 0.0, 0.0)
                probs = np.where(use, table.backoff[np.maximum(c, 0)] * probs + added, probs)
            else:
                use = (c >= 0) & (max_order == m)
                count = np.where(gram >= 0, table.counts[gram_ok] if len(table.keys) else 0, 0)
                denom = table.raw_total[np.maximum(c, 0)] + k * V
                probs = np.where(use, (count + k) / denom, probs)
        return probs

    def _context_of(self, context: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Context ids and max order for predicting the token after `context`."""
        context = list(context)[-(self.config.order - 1):] if self.config.order > 1 else []
        if not context:
            ctx = np.full((1, self.config.order), -1, dtype=np.int64)
            ctx[0, 0] = 0
            return ctx, np.array([1])
        ctx, max_order = self._contexts(np.asarray(context, dtype=np.int64), np.arange(len(context)))
        return ctx[-1:], max_order[-1:]

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(· | context) over the vocabulary, float64 (V,); only the last n-1 tokens matter."""
        return self._distributions(*self._context_of(context))[0]

    def prob(self, context: Sequence[int], token: int) -> float:
        """P(token | context)."""
        ctx, max_order = self._context_of(context)
        return float(self._token_probs(ctx, max_order, np.array([token]))[0])

    def counts(self, context: Sequence[int]) -> dict[int, int]:
        """Raw counts of the tokens seen after `context` (at most n-1 tokens)."""
        ctx, max_order = self._context_of(context)
        m = int(max_order[0])
        c = int(ctx[0, m - 1])
        if c < 0:
            return {}
        table = self.orders[m - 1]
        grams = range(table.start[c], table.start[c + 1])
        return {int(table.token[g]): int(table.counts[g]) for g in grams}

    def perplexity(self, sequences: Iterable[Sequence[int]] | np.ndarray | torch.Tensor) -> float:
        """exp(mean negative log-likelihood) of every token after the first of each sequence."""
        toks, where = _flatten(sequences)
        ctx, max_order = self._contexts(toks, where)
        # Position t predicts t+1 when t+1 is in the same sequence.
        has_next = np.append(where[1:] == where[:-1] + 1, False) if len(toks) else np.zeros(0, bool)
        if not has_next.any():
            raise DataError("perplexity needs at least one sequence of two or more tokens")
        p = self._token_probs(ctx[has_next], max_order[has_next], toks[1:][has_next[:-1]])
        return math.exp(-np.log(p).mean())

    def sample(self, context: Sequence[int], n_tokens: int, temperature: float = 1.0,
               generator: np.random.Generator | None = None) -> list[int]:
        """Draw `n_tokens` tokens one at a time after `context`."""
        rng = generator if generator is not None else np.random.default_rng()
        history, out = list(context), []
        for _ in range(n_tokens):
            p = self.distribution(history)
            if temperature != 1.0:
                p = p ** (1.0 / temperature)
                p /= p.sum()
            token = int(rng.choice(len(p), p=p))
            out.append(token)
            history.append(token)
        return out

    # ---- the language model protocol ----------------------------------------------------

    def new_cache(self, batch_size: int, max_len: int | None = None) -> NGramState:
        """An empty history for `batch_size` rows; `max_len` is accepted and ignored."""
        return NGramState(batch_size, self.config.order)

    def forward(self, idx: torch.Tensor, cache: NGramState | None = None,
                lengths: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Log-probabilities (B, T, V) of the next token at every position of ids (B, T).

        `lengths` (B,) marks right padding: only row b's first lengths[b] ids enter its history.
        `last_only` returns (B, 1, V), each row's last real position only."""
        B, T = check_idx(idx)
        new = idx.detach().cpu().numpy().astype(np.int64)  # on the host already: checking is free
        lo, hi = int(new.min()), int(new.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ConfigError(f"token id {bad} is out of range for vocab_size {self.config.vocab_size}; "
                              "was the input encoded with the model's tokenizer?")
        if cache is None:
            out = self._log_probs(new, T).to(idx.device)
            return last_positions(out, lengths) if last_only else out
        if cache.batch_size != B:
            raise ConfigError(f"input has batch size {B} but the cache was made for {cache.batch_size}; "
                              f"call model.new_cache({B})")
        if len({len(h) for h in cache.tokens}) == 1:  # equal histories: one vectorized pass
            out = self._log_probs(np.concatenate([np.stack(cache.tokens), new], axis=1), T)
        else:
            out = torch.cat([self._log_probs(np.concatenate([h, row])[None], T)
                             for h, row in zip(cache.tokens, new)])
        real = [T] * B if lengths is None else [int(n) for n in lengths]
        keep = self.config.order - 1  # the longest context any prediction reads
        cache.tokens = [np.concatenate([h, row[:n]])[max(len(h) + n - keep, 0):] if keep else h[:0]
                        for h, row, n in zip(cache.tokens, new, real)]
        cache.length += T
        out = out.to(idx.device)
        return last_positions(out, lengths) if last_only else out

    def _log_probs(self, rows: np.ndarray, T: int) -> torch.Tensor:
        """(B, T, V) log-probabilities at the last T positions of the histories `rows` (B, L)."""
        B, L = rows.shape
        ctx, max_order = self._contexts(rows.ravel(), np.tile(np.arange(L), B))
        keep = (np.arange(B * L) % L) >= L - T  # only the new positions
        probs = self._distributions(ctx[keep], max_order[keep], dtype=np.float32)
        return torch.from_numpy(np.log(probs)).view(B, T, -1)

    # ---- files ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write config and counts to one `.npz` file (a model directory names it `ngram.npz`)."""
        arrays: dict[str, np.ndarray] = {"config": np.array(json.dumps(self.config.to_dict()))}
        for m, table in enumerate(self.orders, start=1):
            arrays[f"keys_{m}"], arrays[f"counts_{m}"] = table.keys, table.counts
        for m, cont in enumerate(self._continuation, start=1):
            arrays[f"continuation_{m}"] = cont
        path = Path(path)
        with open(path, "wb") as f:  # a file object stops numpy from appending ".npz"
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NGramLM:
        """Read a model written by `save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                config = NGramConfig.from_dict(json.loads(str(data["config"])))
                n = config.order
                counts = [(data[f"keys_{m}"], data[f"counts_{m}"]) for m in range(1, n + 1)]
                continuation = [data[f"continuation_{m}"] for m in range(1, n)]
        except (OSError, KeyError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise DataError(f"{path} is not an n-gram model file written by NGramLM.save: {e}") from e
        model = cls(config)
        model._tables(counts, continuation)
        return model
