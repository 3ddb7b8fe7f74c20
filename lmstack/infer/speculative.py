"""Speculative decoding: a cheap drafter guesses several tokens, the model checks them all in ONE
forward pass, and the output is still exactly the model's own.

Papers: Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via Speculative
Decoding"; Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative
Sampling" (the same rule, found independently); Saxena 2023, "Prompt Lookup Decoding" (the
draft-free n-gram drafter); Cai et al. 2024, "Medusa" (extra heads as the drafter, medusa_drafter.py).

Why it helps. At batch 1 a decode step is bound by reading every weight once (and, for small
models on a CPU, by per-layer overhead), not by arithmetic: a forward over γ+1 tokens costs
about as much as over 1. So if a drafter proposes d1..dγ, the target ("p") scores all γ+1
positions (after the last token, after d1, ..., after dγ) in one pass, and every accepted draft
token is a decode step saved.

One round (batch 1; the target's KV cache holds every token but the last):

1. the drafter proposes up to γ tokens d1..dγ, with their draft distributions q_j (or none: a
   deterministic drafter, i.e. q_j = one-hot(d_j));
2. the target runs [last, d1..dγ] through its cache: γ+1 next-token distributions p_0..p_γ,
   each after the same logits processors `Engine.generate` uses (processors.py);
3. accept d_j, in order, with probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection
   sample the next token from norm(max(0, p_j - q_j)) and stop; if all γ are accepted, sample a
   bonus token from p_γ. Greedy (temperature 0) is the limit: accept while d_j equals the
   target's argmax, then take the target's argmax. Either way a round yields 1..γ+1 tokens;
4. `cache.crop(...)` forgets the rejected positions in the target's (and the draft's) cache.

Why the output distribution is exactly the target's (Leviathan et al., appendix A.1): the
token emitted at a position is d with probability q(d)·min(1, p(d)/q(d)) = min(q(d), p(d)) by
acceptance, plus P(reject)·r(d) by the residual r = max(0, p - q) / Σmax(0, p - q); since
P(reject) = 1 - Σmin(p, q) = Σmax(0, p - q), the sum is min(p, q) + max(0, p - q) = p(d).
With a deterministic drafter (q one-hot at d) the rule reads: accept d with probability p(d),
else sample from p with d removed. tests/infer/test_speculative.py checks this with a
chi-square test on a toy model (and shows that the draft's own distribution fails it).

Structured output: a constrained row's p_j is taken under the constraint's mask after the text
and d1..d_{j-1} (`draft_masks`, on a fork of the row's matcher), so a draft the constraint
forbids has p = 0 and is rejected, and greedy output equals plain constrained greedy; the
accepted tokens advance the row's own matcher in `Row.take`.

Processors. Both sides follow the request's one `DecodePlan` (step.py): the target's p_j is
`plan.process(logits_j, history + d1..d_{j-1})` -- every processor (temperature, top-k, top-p, min-p,
typical, penalties, banned words, min_new_tokens) applies to each position exactly as it would
in plain decoding, so the guarantee holds for the processed distribution. The draft model's q_j
gets the same processors on its own logits (not needed for exactness -- any q works -- but
matching them raises acceptance). Stop ids, stop strings, max_new_tokens, the context limit,
UTF-8-safe streaming and finish reasons are `Row.take`'s bookkeeping (step.py), fed one
accepted token at a time, so they behave as in `Engine.generate`. A seed makes a call
reproducible, but speculative sampling draws more random numbers than plain sampling (drafts,
acceptance tests), so the same seed gives a different (equally distributed) sample.

Drafters (exactly one per decoder):

- a draft model (`draft=`): a small lmstack model with the SAME tokenizer (fingerprints are
  compared; vocab sizes must match) and its own KV cache, run γ times per round;
- prompt lookup (`prompt_lookup=n`): find the last n-gram (then n-1, ..., 1) of the context
  earlier in the prompt + generated text, propose the γ tokens that followed it -- free, and
  very good on repetitive text (code, edits, extraction);
- Medusa heads (`medusa=`, medusa_drafter.py): K heads on the target's last hidden state propose the
  next K tokens; no extra forward at all.

Cost model (Leviathan et al. §3): with per-token acceptance rate α, a round yields
E = (1 - α^{γ+1}) / (1 - α) tokens; if a draft step costs c target steps and a (γ+1)-token
verification costs about one target step, the speedup is E / (γ·c + 1). A draft model wants
c ≪ 1 and high α; prompt lookup and Medusa have c ≈ 0, so any acceptance is profit, minus the
small fixed cost of the longer verification pass.

Design: a `SpeculativeDecoder` wraps an `Engine` (its model, tokenizer, eos ids and defaults)
rather than adding branches to `Engine.generate`'s batched loop: speculation is per sequence
(each row accepts a different number of tokens per round), carries state (the draft's cache,
acceptance statistics) and supports only greedy and sampling. `Engine.speculative(...)` builds
one. A list of prompts is decoded one prompt at a time.

    from lmstack.infer import Engine
    target = Engine.load("runs/spec-bench/target")
    spec = target.speculative(draft=Engine.load("runs/spec-bench/draft"), gamma=4)
    spec.generate("def fibonacci(n):", temperature=0, max_new_tokens=64).text
    spec.stats            # proposed, accepted, acceptance_rate, target_passes of the last call
    for delta in target.speculative(prompt_lookup=3).stream("import os", temperature=0):
        print(delta, end="")

Run the tests: `pytest tests/infer/test_speculative.py lmstack/infer/speculative.py`; the
benchmark: `flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/speculative.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.infer.config import GenerationConfig
from lmstack.infer.drafters import Drafter, Round
from lmstack.infer.medusa_drafter import MedusaDrafter
from lmstack.infer.sampling import as_prompts, check_prompts, context_length
from lmstack.infer.step import Completion, Row, constraint_mask, draw, new_rows

# ---- the pure parts -------------------------------------------------------------------------


def accept_reject(p: torch.Tensor, q: torch.Tensor | None, draft_tokens: Sequence[int],
                  generator: torch.Generator | None = None) -> tuple[int, int]:
    """Speculative sampling for one round: (number of draft tokens accepted, the next token).

    `p` (k+1, V): the target's probabilities after the last token and after each draft token;
    `q` (k, V): the draft's probabilities the k tokens were drawn from, or None for a
    deterministic drafter (q = one-hot). Accept d_j with probability min(1, p_j(d_j)/q_j(d_j));
    on the first rejection draw from norm(max(0, p_j - q_j)); if all are accepted draw a bonus
    token from p_k. The emitted tokens are distributed exactly as p.

    >>> g = torch.Generator().manual_seed(0)
    >>> p = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> accept_reject(p, None, [1], g)          # p gives d1 = 1 probability 1: accepted, then 2
    (1, 2)
    >>> accept_reject(p, None, [0], g)          # p(0) = 0: rejected, drawn from p without 0
    (0, 1)
    >>> q = torch.tensor([[0.5, 0.5, 0.0]])
    >>> accept_reject(torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]), q, [1], g)  # p = q: kept
    (1, 0)
    """
    k = len(draft_tokens)
    if p.size(0) != k + 1 or (q is not None and q.size(0) != k):
        raise ConfigError(f"accept_reject needs p with {k + 1} rows and q with {k}; got "
                          f"{p.size(0)} and {None if q is None else q.size(0)}")
    p = p.double()
    for j, d in enumerate(draft_tokens):
        pd = float(p[j, d])
        qd = 1.0 if q is None else float(q[j, d])
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if qd > 0 and u * qd < pd:  # u < p/q, i.e. accept with probability min(1, p/q)
            continue
        if q is None:
            residual = p[j].clone()
            residual[d] = 0.0
        else:
            residual = (p[j] - q[j].double()).clamp(min=0.0)
        if float(residual.sum()) <= 0.0:  # only by rounding (p == q rejects with probability 0)
            residual = p[j]
        return j, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return k, int(torch.multinomial(p[k], 1, generator=generator))


def greedy_accept(draft_tokens: Sequence[int], target_choices: Sequence[int]) -> tuple[int, int]:
    """Greedy verification: accept draft tokens while they equal the target's argmax; return
    (number accepted, the target's own next token). `target_choices` has one more entry than
    `draft_tokens` (the bonus token when all are accepted).

    >>> greedy_accept([5, 6, 7], [5, 6, 9, 4])
    (2, 9)
    >>> greedy_accept([5, 6], [5, 6, 4])
    (2, 4)
    >>> greedy_accept([], [3])
    (0, 3)
    """
    for j, d in enumerate(draft_tokens):
        if d != target_choices[j]:
            return j, int(target_choices[j])
    return len(draft_tokens), int(target_choices[len(draft_tokens)])


def verify_round(row: Row, logits: torch.Tensor, drafts: list[int],
                 q: torch.Tensor | None) -> tuple[int, str]:
    """One round of verification for one row, through the row's one `DecodePlan` (step.py):
    `logits` (k+1, V) are the target's after the row's last token and after each of the k
    `drafts` (drawn from `q` (k, V), or None: chosen deterministically). Each position is
    processed exactly as plain decoding would process it (the drafts before it as history),
    the drafts are accepted by the rule above, and the kept tokens go to `Row.take` one at a
    time, stopping where the row finishes. Returns (drafts accepted, text released).

    The speculative decoder and the server's scheduler (serve/scheduler.py) both call it."""
    plan = row.plan
    seq, m = row.prompt + row.tokens, len(drafts) + 1
    if row.matcher is not None:  # structured output: position j under the mask after d1..dj
        logits = logits.masked_fill(~draft_masks(row, drafts).to(logits.device), float("-inf"))
    processed = plan.process(logits, [seq + drafts[:j] for j in range(m)],
                             [row.tokens + drafts[:j] for j in range(m)])            # (m, V)
    if plan.greedy:
        n_acc, nxt = greedy_accept(drafts, processed.argmax(-1).tolist())
    else:
        n_acc, nxt = accept_reject(F.softmax(processed, dim=-1), q, drafts, row.generator)
    kept = drafts[:n_acc] + [nxt]
    text = ""
    for token, (lp, top) in zip(kept, plan.report(logits[:len(kept)], kept)):
        text += row.take(token, lp, top)
        if row.finish_reason is not None:  # a stop id, a stop string or a limit: the rest is dropped
            break
    return n_acc, text


def draft_masks(row: Row, drafts: list[int]) -> torch.Tensor:
    """The constraint's masks (k+1, V) at each verified position: after the row's text, then
    after each draft in turn (on a fork of the row's matcher). Past a draft the mask forbids,
    which is rejected there, the positions are never used and repeat the last mask."""
    matcher, masks = row.matcher.fork(), []
    for j, d in enumerate([*drafts, None]):
        masks.append(constraint_mask(matcher, row.plan.stop_ids))
        if d is None:
            break
        if not masks[-1][d] or d in row.plan.stop_ids:
            masks += [masks[-1]] * (len(drafts) - j)
            break
        matcher.advance(d)
    return torch.stack(masks)


def row_cache_length(row: Row, gamma: int) -> int:
    """Positions a row's KV cache needs when it speculates: its prompt, its new tokens and one
    round of drafts beyond them (never past the model's context)."""
    return min(row.plan.ctx, len(row.prompt) + row.plan.cfg.max_new_tokens + gamma + 1)


def draft_count(row: Row, gamma: int, drafter: Drafter) -> int:
    """How many tokens to draft for `row` now: at most `gamma`, and never a draft that could
    not be kept (past max_new_tokens or the context, where the last token is the target's own
    anyway), nor more than the drafter has room for."""
    seq_len = len(row.prompt) + len(row.tokens)
    return max(0, min(gamma, row.plan.cfg.max_new_tokens - len(row.tokens) - 1,
                      row.plan.ctx - seq_len, drafter.room(seq_len)))


def prompt_lookup(tokens: Sequence[int], ngram: int, k: int, min_ngram: int = 1) -> list[int]:
    """Draft-free proposals: the up to `k` tokens that followed the most recent earlier
    occurrence of the last `ngram` tokens; if there is none, try ngram-1, ... down to
    `min_ngram`; [] when nothing matches.

    >>> prompt_lookup([1, 2, 3, 4, 1, 2], ngram=2, k=3)   # (1, 2) was followed by 3, 4, 1
    [3, 4, 1]
    >>> prompt_lookup([7, 1, 2, 9, 1, 2, 8, 1, 2], ngram=2, k=2)   # the most recent match wins
    [8, 1]
    >>> prompt_lookup([5, 6, 9, 1, 6], ngram=3, k=2)      # no 3- or 2-gram match; 1-gram (6)
    [9, 1]
    >>> prompt_lookup([1, 2, 3], ngram=2, k=3)
    []
    """
    tokens = list(tokens)
    L = len(tokens)
    for n in range(min(ngram, L - 1), min_ngram - 1, -1):
        pattern = tokens[L - n:]
        for start in range(L - n - 1, -1, -1):  # most recent first; never the suffix itself
            if tokens[start:start + n] == pattern:
                return tokens[start + n:start + n + k]
    return []


@dataclass
class SpecStats:
    """Counts of one speculative call."""

    proposed: int = 0        # draft tokens the target checked
    accepted: int = 0        # of those, accepted
    target_passes: int = 0   # target forward passes while decoding (the prompt's prefill not counted)
    draft_passes: int = 0    # draft-model forward passes (0 for prompt lookup and Medusa)
    new_tokens: int = 0      # tokens generated (a final stop id counted)

    @property
    def acceptance_rate(self) -> float:
        """accepted / proposed (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Generated tokens per target forward pass (1.0 for plain decoding)."""
        return self.new_tokens / self.target_passes if self.target_passes else 0.0


# ---- drafters -------------------------------------------------------------------------------


# The Drafter interface and the Round it is told are in drafters.py; Medusa's drafter is in
# medusa_drafter.py.


class PromptLookupDrafter(Drafter):
    """Prompt lookup decoding: proposals copied from earlier in the text (`prompt_lookup`)."""

    def __init__(self, ngram: int) -> None:
        if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
            raise ConfigError(f"prompt_lookup is the n-gram size to match and must be an integer "
                              f">= 1, got {ngram!r} (3 is a good default)")
        self.ngram = ngram

    def __str__(self) -> str:
        return f"prompt lookup ({self.ngram}-grams)"

    def propose(self, seq: list[int], n: int) -> tuple[list[int], None]:
        return prompt_lookup(seq, self.ngram, n), None


class DraftModelDrafter(Drafter):
    """A small model with its own KV cache proposes tokens one at a time."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.passes = 0

    def __str__(self) -> str:
        c = self.model.config
        return f"a draft model ({c.n_layer} layers, n_embd {c.n_embd})"

    def start(self, state: Round) -> None:
        super().start(state)
        ctx = context_length(self.model)
        self.max_len = state.max_len if ctx is None else min(ctx, state.max_len)
        self.cache = self.model.new_cache(1, self.max_len)

    def room(self, seq_len: int) -> int:
        # the draft feeds up to position seq_len - 1 + (n - 1)
        return self.max_len - seq_len + 1

    def propose(self, seq: list[int], n: int) -> tuple[list[int], torch.Tensor | None]:
        plan, row = self.state.plan, self.state.row
        x = seq[self.cache.length:]  # what the cache lacks: the last token, or 2 after a full accept
        tokens: list[int] = []
        qs: list[torch.Tensor] = []
        for _ in range(n):
            logits = self.model(torch.tensor([x], device=self.cache.k.device), cache=self.cache)[:, -1].float()
            self.passes += 1
            # the same processors as the target's (not needed for exactness; raises acceptance)
            logits = plan.process(logits, [seq + tokens], [row.tokens + tokens])     # (1, V)
            if plan.greedy:
                t = int(logits.argmax(-1))
            else:
                probs = F.softmax(logits, dim=-1)
                t = draw(probs, [row.generator])[0]
                qs.append(probs[0])
            tokens.append(t)
            x = [t]
        return tokens, (torch.stack(qs) if qs else None)

    def commit(self, seq: list[int], hidden: torch.Tensor | None) -> None:
        if self.cache.length > len(seq) - 1:  # rejected drafts: forget them
            self.cache.crop(len(seq) - 1)


# ---- the decoder ----------------------------------------------------------------------------


class SpeculativeDecoder:
    """Greedy and sampling decode of an `Engine`'s model, accelerated by one drafter.

    `draft`: an `Engine` or model with the same tokenizer; `prompt_lookup`: the n-gram size for
    prompt lookup; `medusa`: `MedusaHeads` or a directory holding them (medusa_drafter.py). `gamma`
    (default 4, or the number of Medusa heads) is the most tokens proposed per round."""

    def __init__(self, engine, draft=None, *, gamma: int | None = None,
                 prompt_lookup: int | None = None, medusa=None) -> None:
        self.engine = engine
        self.model = engine.model
        chosen = [name for name, v in (("draft", draft), ("prompt_lookup", prompt_lookup),
                                       ("medusa", medusa)) if v is not None]
        if len(chosen) != 1:
            raise ConfigError(f"speculative decoding needs exactly one drafter (draft=, "
                              f"prompt_lookup= or medusa=), got {chosen or 'none'}")
        if context_length(self.model) is None or not hasattr(self.model, "new_cache"):
            raise ConfigError("speculative decoding needs a transformer whose KV cache can be "
                              "cropped back (GPT); RNN and n-gram models are not supported")
        if draft is not None:
            self.drafter: Drafter = DraftModelDrafter(self._check_draft(draft))
        elif prompt_lookup is not None:
            self.drafter = PromptLookupDrafter(prompt_lookup)
        else:
            self.drafter = MedusaDrafter.for_model(self.model, medusa)
        default = getattr(self.drafter, "num_heads", 4)
        self.gamma = default if gamma is None else gamma
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, int) or self.gamma < 1:
            raise ConfigError(f"gamma (num_speculative_tokens) must be an integer >= 1, got "
                              f"{gamma!r}; 4 is a good default (gamma=1 proposes one token a round)")
        if self.drafter.uses_hidden and not hasattr(self.model, "hidden"):
            raise ConfigError("Medusa heads need a model with a `hidden` method (GPT)")
        self.stats = SpecStats()
        self.last: Completion | None = None

    def _check_draft(self, draft) -> torch.nn.Module:
        """The draft's model, after checking it speaks the target's token ids."""
        tok = getattr(draft, "tokenizer", None)
        model = getattr(draft, "model", draft)
        mine = self.engine.tokenizer
        if tok is not None and mine is not None and tok.fingerprint != mine.fingerprint:
            raise ConfigError(
                f"the draft model's tokenizer (fingerprint {tok.fingerprint}, vocab "
                f"{tok.vocab_size}) differs from the target's ({mine.fingerprint}, vocab "
                f"{mine.vocab_size}): its token ids mean other strings. Train the draft with the "
                "target's tokenizer.json")
        if not hasattr(model, "config") or not hasattr(model, "new_cache") \
                or context_length(model) is None:
            raise ConfigError("the draft must be a transformer (GPT) Engine or model with a KV cache")
        dv, tv = model.config.vocab_size, self.model.config.vocab_size
        if dv != tv:
            raise ConfigError(f"the draft model's vocabulary has {dv} ids but the target's has {tv}; "
                              "draft and target must share one tokenizer and vocab_size")
        return model.eval()

    # ---- public API ---------------------------------------------------------------------

    def generate(self, prompt, config: GenerationConfig | None = None, **settings: Any):
        """Like `Engine.generate` for greedy and sampling: a `Completion`, or a list for a list
        of prompts (decoded one after another). `self.stats` counts the whole call."""
        plan = self.engine.plan(self._config(config, **settings))
        single, prompts = as_prompts(prompt)
        ids = [self.engine.encode(p) for p in prompts]
        check_prompts(ids, self.model)
        self.stats = SpecStats()
        out = []
        for i, p in enumerate(ids):
            row = new_rows([p], plan, 1, self.engine.new_decoder)[0]
            for _ in self._decode(row):
                pass
            c = row.completion()
            c.index = i
            out.append(c)
        self.last = out[-1]
        return out[0] if single else out

    def stream(self, prompt, config: GenerationConfig | None = None, **settings: Any) -> Iterator[str]:
        """Yield text deltas as `Engine.stream` does (UTF-8 safe, never a stop string);
        afterwards `self.last` is the completion and `self.stats` its counts."""
        cfg = self._config(config, **settings)
        ids = [self.engine.encode(prompt)]
        check_prompts(ids, self.model)
        self.stats = SpecStats()
        row = new_rows(ids, self.engine.plan(cfg), 1, self.engine.new_decoder)[0]
        for delta in self._decode(row):
            if delta:
                yield delta
        self.last = row.completion()

    def _config(self, config: GenerationConfig | None, **settings: Any) -> GenerationConfig:
        cfg = self.engine.config(config, **settings)
        if cfg.strategy not in ("greedy", "sample") or cfg.num_return_sequences > 1:
            raise ConfigError(f"speculative decoding does greedy and sampling only, not "
                              f"{cfg.strategy} (num_beams/best_of/num_return_sequences); use "
                              "Engine.generate for those")
        return cfg

    # ---- the loop -----------------------------------------------------------------------

    @torch.inference_mode()
    def _decode(self, row: Row) -> Iterator[str]:
        """Decode one row; yield each text delta (maybe "") as `Row.take` releases it."""
        cfg = row.plan.cfg
        if cfg.max_new_tokens == 0:
            row.finish_reason = "length"
            yield ""
            return
        plan, drafter = row.plan, self.drafter
        prompt = row.prompt
        max_len = row_cache_length(row, self.gamma)
        cache = self.model.new_cache(1, max_len)
        if len(prompt) > 1:  # the cache holds every token but the last
            x = torch.tensor([prompt[:-1]], device=cache.k.device)
            (self.model.hidden if drafter.uses_hidden else self.model)(x, cache=cache, last_only=True)
        drafter.start(Round(plan, row, max_len))
        draft_passes0 = getattr(drafter, "passes", 0)
        while row.finish_reason is None:
            seq = prompt + row.tokens
            n = draft_count(row, self.gamma, drafter)
            drafts, q = drafter.propose(seq, n) if n > 0 else ([], None)
            logits, hidden = self._verify(cache, [seq[-1]] + drafts)
            before = len(row.tokens)
            n_acc, delta = verify_round(row, logits, drafts, q)
            self.stats.accepted += n_acc
            self.stats.new_tokens += len(row.tokens) - before + (row.stop_token is not None)
            if delta or row.finish_reason is not None:
                yield delta
            if row.finish_reason is None:
                new_seq = prompt + row.tokens
                cache.crop(len(new_seq) - 1)  # keep last + accepted drafts; nxt is the new last
                drafter.commit(new_seq, None if hidden is None else hidden[n_acc])
        self.stats.draft_passes += getattr(drafter, "passes", 0) - draft_passes0

    def _verify(self, cache, x: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target's logits (m, V) after each of the m tokens `x` (the last token and the
        drafts), in one forward pass through its cache; and its hidden states for Medusa."""
        ids = torch.tensor([x], device=cache.k.device)                 # (1, m)
        self.stats.target_passes += 1
        self.stats.proposed += len(x) - 1
        if self.drafter.uses_hidden:
            hidden = self.model.hidden(ids, cache=cache)[0]             # (m, C)
            return self.model.lm_head(hidden).float(), hidden
        return self.model(ids, cache=cache)[0].float(), None
