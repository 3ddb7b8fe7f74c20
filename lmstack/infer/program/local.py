"""The local backend: a program's branch on an `Engine`, with one KV cache that only grows.

What the model has read lives in the branch's cache; nothing is computed twice:

- fixed text is encoded when the next hole (or fork) needs it, and appended by one prefill
  forward over just the new tokens (`_feed`), never sampled;
- a gen hole decodes through THE decode step (step.py: its constraint's mask, processors,
  stop rules), each sampled token fed back one at a time; a token the constraint leaves as the
  only choice is taken without sampling (jump-forward) and fed with the next forward;
- a select hole scores all its options in one batched forward over copies of the cache row
  (`cache.select([0] * k)`), then keeps the chosen row: its option is already in the cache;
- after a hole the cache holds exactly the tokens of the text: a stop string's tokens are
  cropped off (`cache.crop`), and the text they covered is re-encoded with what follows;
- token healing (healing.py) backs up over the prompt's last token before an unconstrained
  gen hole and makes its first token begin with that token's bytes.

Beam decoding (`beam(n)`) runs beam.py over the whole prompt for each hole (the search keeps its
own cache), then feeds the winner back into the branch.

Tests: `pytest tests/infer/test_program.py`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.infer.program.healing import heal_split, healing_mask
from lmstack.infer.program.holes import Gen, Select
from lmstack.infer.program.state import CutShort, Stats
from lmstack.infer.sampling import context_length, right_pad
from lmstack.infer.step import constraint_mask, make_generator, new_rows, step
from lmstack.models.kv_cache import KVCache
from lmstack.models.protocol import model_device


class LocalBackend:
    """Programs on a local `Engine`; `heal` is the default of every unconstrained gen hole."""

    def __init__(self, engine: Any, heal: bool = True) -> None:
        self.engine = engine
        self.heal = heal
        self._masks: dict[bytes, np.ndarray] = {}   # healing masks by backed-up bytes

    def start(self, stats: Stats) -> LocalBranch:
        """An empty branch (its cache is made by the first feed)."""
        return LocalBranch(self, stats)

    def healing_mask(self, prefix: bytes) -> np.ndarray:
        """The ids that begin with `prefix`, cached."""
        if prefix not in self._masks:
            self._masks[prefix] = healing_mask(prefix, self.engine.token_vocab.token_bytes)
        return self._masks[prefix]


class LocalBranch:
    """One branch: its cache, the ids in it (`cached`), the logits after the last of them,
    ids known but not yet fed (`tail`) and text not yet encoded (`pending`)."""

    def __init__(self, backend: LocalBackend, stats: Stats) -> None:
        self.backend, self.engine, self.stats = backend, backend.engine, stats
        self.model = self.engine.model
        self.ctx = context_length(self.model)
        self.cache: KVCache | None = None
        self.cached: list[int] = []
        self.logits: torch.Tensor | None = None     # (1, V) float
        self.tail: list[int] = []
        self.pending = ""

    # ---- feeding the cache ------------------------------------------------------------------

    def append(self, text: str) -> None:
        """Fixed text: encoded and prefilled when the next hole needs it."""
        self.pending += text

    def _flush(self, heal: bool = False, stops: list[str] = ()) -> bytes:
        """Feed the tail and the pending text; with `heal`, hold back the text's last token
        and return its bytes (the hole's first token must begin with them), unless its text
        shares a character with a stop string (the stop would be found in the prompt)."""
        text_ids = self.engine.encode(self.pending) if self.pending else []
        healed = b""
        if heal and text_ids:
            _, healed = heal_split(self.cached + self.tail + text_ids,
                                   self.engine.token_vocab.token_bytes)
            if any(set(s) & set(healed.decode("utf-8")) for s in stops):
                healed = b""
            if healed:
                text_ids = text_ids[:-1]
        self.pending = ""
        self._feed(self.tail, None)   # generated tokens: counted when they were chosen
        self.tail = []
        self._feed(text_ids, "prefill")
        if self.logits is None:
            raise ConfigError("the program has no text before its first hole: append a prompt "
                              "first (an empty prompt has nothing to continue)")
        return healed

    @torch.inference_mode()
    def _feed(self, ids: list[int], kind: str | None) -> None:
        """Run `ids` through the model after the cached ones (one forward); count them as
        `kind` in the stats (None: counted already)."""
        if not ids:
            return
        self._room(len(ids))
        x = torch.tensor([ids], device=model_device(self.model))
        self.logits = self.model(x, cache=self.cache, last_only=True)[:, -1].float()
        self.cached += ids
        if kind is not None:
            setattr(self.stats, kind, getattr(self.stats, kind) + len(ids))
        self.stats.forwards += 1

    def _room(self, n: int) -> None:
        """Make the cache hold `n` more positions: a clear error past the context, else a
        cache twice the size (the filled positions copied) when it is full."""
        need = len(self.cached) + n
        if self.ctx is not None and need >= self.ctx:
            raise ConfigError(f"the program needs {need} tokens but the model's context is "
                              f"{self.ctx} (with room for one more token); shorten the text "
                              "or lower max_tokens of the holes")
        if self.cache is None:
            size = max(256, 2 * need) if self.ctx is None else min(self.ctx, max(256, 2 * need))
            self.cache = self.model.new_cache(1, size)
            if not isinstance(self.cache, KVCache):
                raise ConfigError("prompt programs need a transformer's KV cache (GPT); this "
                                  f"model has a {type(self.cache).__name__}")
        elif need > self.cache.max_len:
            size = 2 * need if self.ctx is None else min(self.ctx, 2 * need)
            grown = self.model.new_cache(self.cache.batch_size, size)
            length = self.cache.length
            grown.k[:, :, :, :length] = self.cache.k[:, :, :, :length]
            grown.v[:, :, :, :length] = self.cache.v[:, :, :, :length]
            grown.advance(length)
            self.cache = grown

    # ---- holes ------------------------------------------------------------------------------

    def gen(self, hole: Gen, settings: dict[str, Any]) -> str:
        """Fill a gen hole; return its text (the branch then holds exactly that text)."""
        cfg = self.engine.config(None, **settings)
        if cfg.strategy == "beam":
            self._flush()
            return self._beam(cfg)
        heal = (self.backend.heal if hole.heal is None else hole.heal) and not hole.constrained
        healed = self._flush(heal, cfg.stop)
        row = new_rows([self.cached], self.engine.plan(cfg), 1, self.engine.new_decoder)[0]
        unfed = self._decode(row, healed)
        prefix = healed.decode("utf-8")
        text = row.text
        if not text.startswith(prefix):  # a stop string cut into the backed-up text
            text = prefix
        self._settle(row.tokens, len(row.tokens) - len(unfed), text)
        if row.matcher is not None and not row.matcher.is_accepting():
            raise CutShort(f"{len(row.tokens)} tokens (max_tokens {cfg.max_new_tokens}) ended "
                           "it before its constraint was satisfied: "
                           f"{text[:60]!r}...; raise max_tokens", text[len(prefix):])
        return text[len(prefix):]

    @torch.inference_mode()
    def _decode(self, row: Any, healed: bytes) -> list[int]:
        """Decode `row` from the branch's logits; return its tokens not yet fed."""
        unfed: list[int] = []
        first = True
        while row.finish_reason is None:
            forced = self._forced(row)
            if forced is not None:  # jump-forward: the constraint allows one token only
                row.take(forced)
                if forced not in row.plan.stop_ids:
                    unfed.append(forced)
                    self.stats.forced += 1
                continue
            if unfed:
                self._feed(unfed, None)
                unfed = []
            logits = self.logits
            if first and healed:
                allowed = torch.from_numpy(self.backend.healing_mask(healed))
                logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
            first = False
            step(logits, [row])
            if row.stop_token is None:
                self.stats.decode += 1
                unfed = [row.tokens[-1]]
        return unfed

    def _forced(self, row: Any) -> int | None:
        """The one token the row's constraint allows next, if it allows only one."""
        if row.matcher is None:
            return None
        ids = np.flatnonzero(constraint_mask(row.matcher, row.plan.stop_ids).numpy())
        return int(ids[0]) if len(ids) == 1 else None

    def _settle(self, tokens: list[int], fed: int, text: str) -> None:
        """After a hole wrote `tokens` (the first `fed` of them in the cache) and its text is
        `text`: keep in the cache the longest run of tokens whose bytes begin the text, and
        queue the rest of the text to be encoded with what follows."""
        table = self.engine.token_vocab.token_bytes
        target, done, kept = text.encode("utf-8"), 0, 0
        for t in tokens:
            b = table[t] or b""
            if not b or not target.startswith(b, done):
                break
            done, kept = done + len(b), kept + 1
        while kept and not _whole_chars(target[:done]):  # the rest is re-encoded as text
            kept -= 1
            done -= len(table[tokens[kept]])
        if kept < fed:  # crop past the kept tokens, and re-feed the last kept one for logits
            start = len(self.cached) - fed
            keep_cached = start + kept - 1 if kept > 0 else start - 1
            self.cache.crop(keep_cached)
            self.tail = self.cached[keep_cached:start + kept]
            self.cached = self.cached[:keep_cached]
            self.logits = None
            self.stats.prefill += 1       # that one is computed again
        else:
            self.tail = tokens[fed:kept]
        self.pending = target[done:].decode("utf-8") + self.pending

    def _beam(self, cfg: Any) -> str:
        """A beam-searched hole over the whole prompt; its tokens join the tail."""
        completion = self.engine.generate(list(self.cached), cfg)
        self.stats.prefill += len(self.cached)   # the search reads the whole prompt again
        self.stats.decode += len(completion.tokens)
        self._settle(completion.tokens, 0, completion.text)
        return completion.text

    @torch.inference_mode()
    def select(self, hole: Select, temperature: float, seed: int | None) -> int:
        """Score every option in one batched forward; keep the chosen one's cache row."""
        self._flush()
        options = [self.engine.encode(o) for o in hole.options]
        longest = max(len(o) for o in options)
        self._room(longest)
        k = len(options)
        cache = copy.copy(self.cache)
        cache.select([0] * k)                                          # k copies of the row
        ids, lengths = right_pad(options)
        logits = self.model(ids.to(model_device(self.model)), cache=cache,
                            lengths=lengths).float()                  # (k, T, V)
        self.stats.select += int(lengths.sum())
        self.stats.forwards += 1
        # log P(option token j) is read from the logits before it: the branch's for j = 0
        before = torch.cat([self.logits.expand(k, -1)[:, None], logits[:, :-1]], dim=1)
        logp = F.log_softmax(before, dim=-1).gather(-1, ids[:, :, None].to(before.device))[..., 0]
        real = torch.arange(longest)[None, :] < lengths[:, None]                   # (k, T)
        total = (logp * real.to(logp.device)).sum(-1)
        scores = total / lengths.to(total.device) if hole.normalize == "mean" else total
        if temperature == 0:
            best = int(scores.argmax())
        else:
            probs = F.softmax(scores.double() / temperature, dim=-1)
            best = int(torch.multinomial(probs.cpu(), 1, generator=make_generator(seed, 0)))
        cache.select([best])
        self.cache = cache
        self.cached += options[best]
        self.logits = logits[best, lengths[best] - 1][None]
        self.last_scores = scores.tolist()
        return best

    def fork(self, n: int) -> list[LocalBranch]:
        """n branches that share what is cached so far (each a copy of the cache row)."""
        self._flush()
        out = []
        for _ in range(n):
            b = LocalBranch(self.backend, self.stats)
            b.cache = copy.copy(self.cache)
            b.cache.select([0])                     # a copy of the tensors: branches diverge
            b.cached, b.logits = list(self.cached), self.logits.clone()
            out.append(b)
        return out


def _whole_chars(data: bytes) -> bool:
    """Whether `data` is whole UTF-8 characters (it may end a token mid-character)."""
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
