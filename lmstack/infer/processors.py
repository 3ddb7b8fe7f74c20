"""Logits processors: the small pure functions that turn a model's next-token logits into the
distribution the inference engine samples from.

    .venv/bin/python -m pytest -q tests/infer/test_processors.py lmstack/infer/processors.py

Every function takes `logits`, a float tensor (B, V) with one row per sequence being generated,
and returns a NEW (B, V) tensor; the input is never modified. A disallowed token gets -inf, so
softmax gives it probability exactly 0. Functions that look at the history take
`tokens: list[list[int]]`, one list of ids per row.

Truncation (which tokens may be sampled at all; probabilities in float64):

- top-k (Fan et al. 2018, "Hierarchical Neural Story Generation"): the k highest logits.
- top-p, nucleus (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"): the
  smallest set of most probable tokens whose mass is >= p.
- min-p (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling"): tokens with probability
  >= p * (probability of the top token), so the cut adapts to how confident the model is.
- typical (Meister et al. 2022, "Locally Typical Sampling"): tokens whose surprisal -log p_i
  is closest to the entropy H, the smallest such set with mass >= p; it may drop the top token.

Penalties reshape the logits from the history; the two families differ in kind:

- repetition_penalty (Keskar et al. 2019, CTRL), multiplicative: for each distinct id in the
  prompt + generated tokens (HF applies it to all of `input_ids`), a logit > 0 is divided by
  the penalty and a logit < 0 multiplied by it. The sign matters (CTRL divided every logit,
  which raises a negative one; HF's sign rule fixes that); the count does not: once seen,
  penalised once. Neutral 1.0; > 1 discourages repeats.
- presence / frequency (OpenAI API reference), additive: logit -= presence * [count > 0] +
  frequency * count, counted over the generated tokens only (the engine passes only those).
  The same shift whatever the sign of the logit, growing with the count for frequency.
  Neutral 0, range [-2, 2]; negative values encourage repeats.

OpenAI also defines `logit_bias` (values in [-100, 100]). no_repeat_ngram is HF's
`no_repeat_ngram_size` (the trigram blocking of Paulus et al. 2018): it bans any token that
would repeat an n-gram of the history.

`process` applies everything in ONE order, each step skipped when disabled:

0. (in step.py, before `process`) a constrained row's structured-output mask: forbidden tokens
   -inf, so every step below renormalises over the tokens the constraint allows.
1. logit_bias, 2. banned tokens, 3. banned sequences, 4. min_new_tokens — the user's absolute
   constraints on raw logits, first, as OpenAI applies logit_bias before sampling. A -inf stays
   -inf under every later step (+bias, *penalty, -penalty, /T), so the bans commute with all
   of them; only their place relative to the all-banned check below matters.
5. repetition_penalty over prompt + generated, 6. presence / frequency over generated,
   7. no_repeat_ngram over prompt + generated — the history-based processors, as HF runs its
   processors before its warpers. They act on raw logits: the additive penalties are in raw
   logit units (OpenAI, vLLM), and (x - a) / T != x / T - a, so they must precede temperature.
   If a row is now all -inf, `process` raises ConfigError naming the settings that banned it.
8. temperature — skipped when temperature == 0: the engine takes the argmax, and so are the
   filters of step 9, since every one of them keeps the argmax of the limit (a point mass),
   while typical filtering of the unscaled logits could drop it.
9. top_k, top_p, min_p, typical_p, HF's warper order, on the temperature-scaled distribution,
   each on the distribution the previous one left (renormalised over the survivors).

With default `ProcessorSettings`, `process` returns a copy equal to its input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from lmstack.errors import ConfigError

NEG_INF = float("-inf")


def _natural(v: object) -> bool:
    """True for an integer >= 0 (a count, a size).

    >>> _natural(3), _natural(-1), _natural(2.0)
    (True, False, False)
    """
    return isinstance(v, int) and v >= 0


OPENAI_RANGE = "in [-2, 2] (OpenAI's range)"
OFF = "use 0 to disable it"

# setting: (test, allowed range, how to turn it off) -- shared by the functions and validate()
_RULES: dict[str, tuple[Callable[[float], bool], str, str]] = {
    "temperature": (
        lambda v: 0 <= v < math.inf,
        ">= 0",
        "use 0 for greedy decoding, 1.0 for the model's own distribution",
    ),
    "top_k": (_natural, "an integer >= 0", "use 0 to disable top-k"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]", "use 1.0 to disable nucleus filtering"),
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1]", "use 0 to disable min-p filtering"),
    "typical_p": (lambda v: 0 < v <= 1, "in (0, 1]", "use 1.0 to disable typical filtering"),
    "repetition_penalty": (
        lambda v: 0 < v < math.inf,
        "> 0",
        "use 1.0 to disable it; values > 1 discourage repeats",
    ),
    "presence_penalty": (lambda v: -2 <= v <= 2, OPENAI_RANGE, OFF),
    "frequency_penalty": (lambda v: -2 <= v <= 2, OPENAI_RANGE, OFF),
    "no_repeat_ngram_size": (_natural, "an integer >= 0", OFF),
    "min_new_tokens": (_natural, "an integer >= 0", OFF),
}


def _check(name: str, value: float) -> None:
    """Raise ConfigError naming the setting and its allowed range unless value is allowed.

    >>> _check("top_p", 1.5)
    Traceback (most recent call last):
    lmstack.errors.ConfigError: top_p must be in (0, 1], got 1.5; use 1.0 to disable nucleus filtering
    """
    test, allowed, hint = _RULES[name]
    if not test(value):
        raise ConfigError(f"{name} must be {allowed}, got {value!r}; {hint}")


def _check_rows(logits: Tensor, rows: Sequence[object], what: str) -> None:
    """Raise ValueError (an engine bug, not a user setting) unless there is one row per sequence."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, vocab), got shape {tuple(logits.shape)}")
    if len(rows) != logits.shape[0]:
        raise ValueError(f"{what} has {len(rows)} rows but logits has {logits.shape[0]}")


def _ids(ids: Iterable[int], vocab_size: int, what: str, device: torch.device) -> Tensor:
    """Token ids as a long tensor; ConfigError naming the id if one is outside the vocabulary.

    >>> _ids([3, 9], 8, "logit_bias", torch.device("cpu"))
    Traceback (most recent call last):
    lmstack.errors.ConfigError: logit_bias: token id 9 is outside the vocabulary (vocab size 8, ids 0..7)
    """
    t = torch.as_tensor(list(ids), dtype=torch.long, device=device)
    outside = (t < 0) | (t >= vocab_size)
    if outside.any():  # checked because a negative id would silently index from the end
        bad = int(t[outside][0])
        raise ConfigError(
            f"{what}: token id {bad} is outside the vocabulary "
            f"(vocab size {vocab_size}, ids 0..{vocab_size - 1})"
        )
    return t


FIRST_CANDIDATES = 256  # tokens ranked first; a nucleus is rarely larger


def _drop_outside_prefix(key: Tensor, probs: Tensor, p: float) -> Tensor:
    """Mask of the tokens outside the shortest prefix, by descending key, with mass >= p.

    Sorting all V tokens dominates the cost (~20 ms for 8 x 50257 on a CPU) while the prefix is
    usually short, so rank only the top FIRST_CANDIDATES with torch.topk, and sort everything
    only when some row's candidates hold less than p. Which of several tokens tied on key at
    the edge is kept is topk's or sort's choice.

    >>> probs = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    >>> _drop_outside_prefix(probs, probs, 0.7).tolist()  # 0.5 < 0.7 <= 0.5 + 0.3
    [[True, False, False]]
    """
    order = key.topk(min(key.shape[-1], FIRST_CANDIDATES), dim=-1).indices  # descending
    cum = probs.gather(-1, order).cumsum(-1)
    if (cum[..., -1] < p).any():  # a flat distribution: rank every token
        order = key.argsort(dim=-1, descending=True)
        cum = probs.gather(-1, order).cumsum(-1)
    # mass strictly before each candidate: the first has 0 < p, so at least one is kept
    keep = F.pad(cum[..., :-1], (1, 0)) < p
    return torch.ones_like(key, dtype=torch.bool).scatter_(-1, order, ~keep)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide the logits by temperature > 0 (< 1 sharpens, > 1 flattens the distribution).

    >>> apply_temperature(torch.tensor([[2.0, -1.0]]), 0.5)
    tensor([[ 4., -2.]])
    """
    if not 0 < temperature < math.inf:
        raise ConfigError(
            f"apply_temperature needs a temperature > 0, got {temperature!r}; "
            "temperature 0 means greedy decoding, which the engine does with an argmax"
        )
    return logits.clone() if temperature == 1.0 else logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k highest logits of each row; tokens tied with the k-th are all kept; 0 disables.

    >>> top_k_filter(torch.tensor([[1.0, 3.0, 2.0, 2.0]]), k=2)  # 2.0 ties for second place
    tensor([[-inf, 3., 2., 2.]])
    """
    _check("top_k", k)
    if k == 0 or k >= logits.shape[-1]:
        return logits.clone()
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus: keep the fewest most probable tokens whose probability mass is >= p; 1.0 disables.

    Of several tokens tied in probability at the edge of the nucleus, any may be kept.

    >>> probs = torch.tensor([[0.1, 0.6, 0.3]])
    >>> top_p_filter(probs.log(), 0.8).isfinite().tolist()  # 0.6 < 0.8 <= 0.6 + 0.3
    [[False, True, True]]
    """
    _check("top_p", p)
    if p == 1.0:
        return logits.clone()
    probs = torch.softmax(logits.double(), dim=-1)
    return logits.masked_fill(_drop_outside_prefix(probs, probs, p), NEG_INF)


def min_p_filter(logits: Tensor, p: float) -> Tensor:
    """Drop tokens whose probability is < p times the top token's probability; 0 disables.

    >>> probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    >>> min_p_filter(probs.log(), 0.2).isfinite().tolist()  # threshold 0.2 * 0.5 = 0.1
    [[True, True, True, False]]
    """
    _check("min_p", p)
    if p == 0:
        return logits.clone()
    probs = torch.softmax(logits.double(), dim=-1)
    threshold = p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, NEG_INF)


def typical_filter(logits: Tensor, p: float) -> Tensor:
    """Locally typical: keep the tokens whose surprisal is closest to the entropy, mass >= p.

    Of tokens tied in |surprisal - entropy| at the edge any may be kept (HF keeps them all).
    1.0 disables. Unlike the other filters it may drop the most probable token:

    >>> probs = torch.tensor([[0.5, 0.3, 0.2]])  # entropy 1.03 nats; surprisals .69, 1.20, 1.61
    >>> typical_filter(probs.log(), 0.2).isfinite().tolist()
    [[False, True, False]]
    >>> typical_filter(probs.log(), 0.5).isfinite().tolist()
    [[True, True, False]]
    """
    _check("typical_p", p)
    if p == 1.0:
        return logits.clone()
    logp = torch.log_softmax(logits.double(), dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).nansum(dim=-1, keepdim=True)  # banned tokens: 0 * -inf = nan
    gap = (-logp - entropy).abs()  # banned tokens: inf, sorted last
    return logits.masked_fill(_drop_outside_prefix(-gap, probs, p), NEG_INF)


def repetition_penalty(logits: Tensor, tokens: list[list[int]], penalty: float) -> Tensor:
    """CTRL penalty, HF's way: each id seen in the row's tokens, logit > 0 / penalty, < 0 * penalty.

    >>> repetition_penalty(torch.tensor([[2.0, -2.0, 2.0]]), [[0, 1, 1]], 2.0)
    tensor([[ 1., -4.,  2.]])
    """
    _check("repetition_penalty", penalty)
    _check_rows(logits, tokens, "tokens")
    out = logits.clone()
    if penalty == 1.0:
        return out
    for r, row in enumerate(tokens):
        ids = _ids(row, out.shape[-1], "tokens", out.device).unique()  # once per distinct id
        seen = out[r, ids]
        out[r, ids] = torch.where(seen < 0, seen * penalty, seen / penalty)
    return out


def presence_frequency_penalty(
    logits: Tensor, tokens: list[list[int]], presence: float, frequency: float
) -> Tensor:
    """OpenAI's additive penalties: logit[j] -= presence * (count[j] > 0) + frequency * count[j].

    The engine passes only the generated tokens here (OpenAI's definition).

    >>> presence_frequency_penalty(torch.zeros(1, 3), [[2, 2, 0]], presence=0.5, frequency=0.25)
    tensor([[-0.7500,  0.0000, -1.0000]])
    """
    _check_rows(logits, tokens, "tokens")
    out = logits.clone()
    if presence == 0 and frequency == 0:
        return out
    for r, row in enumerate(tokens):
        if len(row) == 0:
            continue
        ids = _ids(row, out.shape[-1], "tokens", out.device)
        counts = torch.bincount(ids, minlength=out.shape[-1]).to(out.dtype)
        out[r] -= presence * (counts > 0).to(out.dtype) + frequency * counts
    return out


def _ngram_completions(row: Tensor, n: int) -> Tensor:
    """Ids that followed an earlier occurrence of the row's last n - 1 ids (one per n-gram).

    >>> _ngram_completions(torch.tensor([1, 2, 3, 1, 2]), 3)  # (1, 2) was followed by 3
    tensor([3])
    """
    if len(row) < n:
        return row[:0]
    windows = row.unfold(0, n, 1)  # every n-gram of the row, (len - n + 1, n)
    prefix = row[len(row) - n + 1 :]  # empty for n = 1: every seen token completes a 1-gram
    return windows[(windows[:, :-1] == prefix).all(dim=-1), -1]


def no_repeat_ngram(logits: Tensor, tokens: list[list[int]], n: int) -> Tensor:
    """Ban every token that would complete an n-gram already in the row's tokens; 0 disables.

    >>> no_repeat_ngram(torch.zeros(1, 4), [[1, 2, 3, 1, 2]], 3)
    tensor([[0., 0., 0., -inf]])
    """
    _check("no_repeat_ngram_size", n)
    _check_rows(logits, tokens, "tokens")
    out = logits.clone()
    if n == 0:
        return out
    for r, row in enumerate(tokens):
        out[r, _ngram_completions(_ids(row, out.shape[-1], "tokens", out.device), n)] = NEG_INF
    return out


def logit_bias(logits: Tensor, bias: dict[int, float]) -> Tensor:
    """Add bias[id] to that token's logit in every row (OpenAI's logit_bias).

    >>> logit_bias(torch.zeros(1, 3), {0: -100.0, 2: 5.0})
    tensor([[-100.,    0.,    5.]])
    """
    out = logits.clone()
    if not bias:
        return out
    ids = _ids(bias.keys(), out.shape[-1], "logit_bias", out.device)
    out[:, ids] += torch.tensor(list(bias.values()), dtype=out.dtype, device=out.device)
    return out


def ban_tokens(logits: Tensor, token_ids: Iterable[int]) -> Tensor:
    """Set the given ids to -inf in every row.

    >>> ban_tokens(torch.zeros(2, 3), [1])
    tensor([[0., -inf, 0.],
            [0., -inf, 0.]])
    """
    out = logits.clone()
    out[:, _ids(token_ids, out.shape[-1], "banned_token_ids", out.device)] = NEG_INF
    return out


def ban_sequences(logits: Tensor, tokens: list[list[int]], sequences: list[list[int]]) -> Tensor:
    """Bad words: ban s[-1] wherever the row's tokens end with s[:-1] (one-token s: always).

    >>> ban_sequences(torch.zeros(2, 4), [[1, 2], [2, 1]], [[2, 3], [0]])
    tensor([[-inf, 0., 0., -inf],
            [-inf, 0., 0., 0.]])
    """
    _check_rows(logits, tokens, "tokens")
    seqs = [list(s) for s in sequences]
    if any(len(s) == 0 for s in seqs):
        raise ConfigError("banned_sequences contains an empty sequence; remove it")
    _ids([t for s in seqs for t in s], logits.shape[-1], "banned_sequences", logits.device)
    out = logits.clone()
    for r, row in enumerate(tokens):
        row = list(row)
        banned = [s[-1] for s in seqs if len(s) == 1 or row[len(row) - len(s) + 1 :] == s[:-1]]
        if banned:
            out[r, banned] = NEG_INF
    return out


def min_new_tokens(
    logits: Tensor, n_generated: list[int] | int, min_new: int, stop_ids: Iterable[int]
) -> Tensor:
    """Ban stop_ids in the rows that have generated fewer than min_new tokens so far.

    >>> min_new_tokens(torch.zeros(2, 3), [1, 4], min_new=2, stop_ids=[2])
    tensor([[0., 0., -inf],
            [0., 0., 0.]])
    """
    _check("min_new_tokens", min_new)
    counts = [n_generated] * logits.shape[0] if isinstance(n_generated, int) else list(n_generated)
    _check_rows(logits, counts, "n_generated")
    out = logits.clone()
    ids = _ids(stop_ids, out.shape[-1], "stop_ids", out.device)
    young = [r for r, n in enumerate(counts) if n < min_new]
    if young and ids.numel():
        out[torch.tensor(young, device=out.device)[:, None], ids] = NEG_INF
    return out


@dataclass
class ProcessorSettings:
    """Every sampling knob of `process`; the defaults change nothing."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    banned_token_ids: list[int] = field(default_factory=list)
    banned_sequences: list[list[int]] = field(default_factory=list)
    min_new_tokens: int = 0

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise ConfigError naming the first invalid setting and its allowed range.

        >>> ProcessorSettings(top_p=0.9, temperature=0.7).validate(vocab_size=100)
        >>> ProcessorSettings(logit_bias={5: 150}).validate()
        Traceback (most recent call last):
        lmstack.errors.ConfigError: logit_bias[5] must be in [-100, 100], got 150; ...
        """
        for name in _RULES:
            _check(name, getattr(self, name))
        for token, value in self.logit_bias.items():
            if not isinstance(token, int):
                raise ConfigError(f"logit_bias keys must be integer token ids, got {token!r}")
            if not -100 <= value <= 100:
                raise ConfigError(
                    f"logit_bias[{token}] must be in [-100, 100], got {value!r}; "
                    "-100 effectively bans the token, 100 effectively forces it"
                )
        if any(len(s) == 0 for s in self.banned_sequences):
            raise ConfigError("banned_sequences contains an empty sequence; remove it")
        if vocab_size is not None:
            cpu = torch.device("cpu")
            _ids(self.logit_bias.keys(), vocab_size, "logit_bias", cpu)
            _ids(self.banned_token_ids, vocab_size, "banned_token_ids", cpu)
            _ids([t for s in self.banned_sequences for t in s], vocab_size, "banned_sequences", cpu)


def _explain_all_banned(
    logits: Tensor,
    settings: ProcessorSettings,
    tokens: list[int],
    generated: list[int],
    stop_ids: list[int],
) -> str:
    """Say which settings banned how many tokens of one row (logits (1, V)) that has none left."""
    s = settings
    bans = {
        "banned_token_ids": lambda x: ban_tokens(x, s.banned_token_ids),
        "banned_sequences": lambda x: ban_sequences(x, [tokens], s.banned_sequences),
        "min_new_tokens": lambda x: min_new_tokens(x, len(generated), s.min_new_tokens, stop_ids),
        "no_repeat_ngram_size": lambda x: no_repeat_ngram(x, [tokens], s.no_repeat_ngram_size),
    }
    already = int(torch.isneginf(logits).sum())
    parts = [f"the model's logits had {already} at -inf"] if already else []
    for name, ban in bans.items():
        if getattr(s, name):
            n = int((torch.isneginf(ban(logits)) & ~torch.isneginf(logits)).sum())
            if n:
                parts.append(f"{name} bans {n}")
    return ", ".join(parts) or "no setting banned anything"


def process(
    logits: Tensor,
    settings: ProcessorSettings,
    tokens: list[list[int]],
    generated: list[list[int]],
    stop_ids: Iterable[int],
    validate: bool = True,
) -> Tensor:
    """Apply every enabled processor in the order of the module docstring; a new (B, V) tensor.

    `tokens` is each row's prompt + generated ids, `generated` only the generated ones.
    `validate=False` skips checking `settings` (a decode loop checks them once, not every step).

    >>> x = torch.tensor([[2.0, 1.0, 0.0]])
    >>> torch.equal(process(x, ProcessorSettings(), [[0]], [[]], stop_ids=[2]), x)
    True
    >>> s = ProcessorSettings(temperature=0.5, top_p=0.7)  # nucleus of the sharpened distribution
    >>> process(x, s, [[0]], [[]], stop_ids=[2])
    tensor([[4., -inf, -inf]])
    """
    s = settings
    if validate:
        s.validate(logits.shape[-1])
    _check_rows(logits, tokens, "tokens")
    _check_rows(logits, generated, "generated")
    stop_ids = list(stop_ids)
    out = logits
    if s.logit_bias:
        out = logit_bias(out, s.logit_bias)
    if s.banned_token_ids:
        out = ban_tokens(out, s.banned_token_ids)
    if s.banned_sequences:
        out = ban_sequences(out, tokens, s.banned_sequences)
    if s.min_new_tokens:
        out = min_new_tokens(out, [len(g) for g in generated], s.min_new_tokens, stop_ids)
    if s.repetition_penalty != 1.0:
        out = repetition_penalty(out, tokens, s.repetition_penalty)
    if s.presence_penalty or s.frequency_penalty:
        out = presence_frequency_penalty(out, generated, s.presence_penalty, s.frequency_penalty)
    if s.no_repeat_ngram_size:
        out = no_repeat_ngram(out, tokens, s.no_repeat_ngram_size)

    dead = torch.isneginf(out).all(dim=-1).nonzero().flatten().tolist()
    if dead:
        r = dead[0]
        why = _explain_all_banned(logits[r : r + 1], s, tokens[r], generated[r], stop_ids)
        raise ConfigError(
            f"every one of the {logits.shape[-1]} tokens is banned for sequence {r} "
            f"({why}); ban fewer tokens, or lower min_new_tokens or no_repeat_ngram_size"
        )

    if s.temperature != 0:  # 0 is greedy: the engine takes the argmax, which every filter keeps
        if s.temperature != 1.0:
            out = apply_temperature(out, s.temperature)
        if s.top_k:
            out = top_k_filter(out, s.top_k)
        if s.top_p != 1.0:
            out = top_p_filter(out, s.top_p)
        if s.min_p:
            out = min_p_filter(out, s.min_p)
        if s.typical_p != 1.0:
            out = typical_filter(out, s.typical_p)
    return logits.clone() if out is logits else out
