"""Generation settings: one dataclass for every strategy, validated where the settings enter.

The strategy follows from the settings, as in the OpenAI API and Hugging Face `generate`:

=====================================  ====================================================
settings                               strategy
=====================================  ====================================================
num_beams > 1                          beam search (constrained when `force_words` is set)
best_of > 1                            sample best_of, keep the best by mean log-probability
temperature == 0                       greedy (argmax)
otherwise                              ancestral sampling from the processed distribution
=====================================  ====================================================

    >>> GenerationConfig(temperature=0).strategy
    'greedy'
    >>> GenerationConfig(top_p=1.5).validate()
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: top_p must be in (0, 1], got 1.5; use 1.0 to disable nucleus filtering
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from lmstack.errors import ConfigError
from lmstack.infer.stopping import check_stops

if TYPE_CHECKING:  # processors.py imports torch; `lmstack generate --help` reads this file
    from lmstack.infer.processors import ProcessorSettings

SEED_MAX = 2**63 - 1  # as the server's API allows; seed + sample index stays in torch's range


@dataclass
class GenerationConfig:
    """Everything `generate` and `stream` accept; defaults are OpenAI's where it has one."""

    max_new_tokens: int = 64
    # Sampling and logits processors (see processors.py for the order they apply in).
    temperature: float = 1.0          # 0 = greedy
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0                # 1 = off
    min_p: float = 0.0                # 0 = off
    typical_p: float = 1.0            # 1 = off
    repetition_penalty: float = 1.0   # HF/CTRL multiplicative, over prompt + generated
    presence_penalty: float = 0.0     # OpenAI additive, over generated
    frequency_penalty: float = 0.0    # OpenAI additive, over generated
    no_repeat_ngram_size: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    banned_token_ids: list[int] = field(default_factory=list)
    banned_words: list[str] = field(default_factory=list)   # encoded by the engine's tokenizer
    min_new_tokens: int = 0
    # Stopping.
    stop: list[str] = field(default_factory=list)           # stop strings (never returned)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False          # keep going past <|endoftext|>
    # Search.
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True
    num_return_sequences: int = 1
    force_words: list[str] = field(default_factory=list)    # constrained beam search
    best_of: int = 1
    # Structured output (structured/): the reply is a sentence of the one language given.
    json_object: bool = False         # OpenAI's JSON mode: a JSON object
    json_schema: dict | str | None = None   # a JSON Schema (dict or its JSON text)
    regex: str | None = None          # the whole reply matches it
    grammar: str | None = None        # Lark EBNF (`start: ...`) or llama.cpp GBNF (`root ::= ...`)
    choices: list[str] = field(default_factory=list)        # exactly one of these strings
    constraint_engine: str = "fast"   # "reference": the readable engine (slow; for tests)
    json_whitespace: int = 1          # JSON: most spaces/newlines between tokens (-1: any)
    # Reproducibility and reporting.
    seed: int | None = None
    logprobs: bool = False            # per-token log-probabilities of the generated tokens
    top_logprobs: int = 0             # and this many most likely alternatives per position

    @property
    def strategy(self) -> str:
        """'beam', 'best_of', 'greedy' or 'sample'."""
        if self.num_beams > 1 or self.force_words:
            return "beam"
        if self.best_of > 1:
            return "best_of"
        return "greedy" if self.temperature == 0 else "sample"

    def processor_settings(self, banned_sequences: list[list[int]] | None = None) -> ProcessorSettings:
        """The logits-processor part of these settings."""
        from lmstack.infer.processors import ProcessorSettings

        names = {f.name for f in fields(ProcessorSettings)}
        values = {n: getattr(self, n) for n in names if hasattr(self, n)}
        return ProcessorSettings(**values, banned_sequences=banned_sequences or [])

    def validate(self, vocab_size: int | None = None) -> GenerationConfig:
        """Raise `ConfigError` naming the first invalid setting; return self."""
        _int_at_least("max_new_tokens", self.max_new_tokens, 0)
        _int_at_least("num_beams", self.num_beams, 1)
        _int_at_least("best_of", self.best_of, 1)
        _int_at_least("num_return_sequences", self.num_return_sequences, 1)
        _int_at_least("top_logprobs", self.top_logprobs, 0)
        if self.top_logprobs > 20:
            raise ConfigError(f"top_logprobs must be at most 20, got {self.top_logprobs}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ConfigError(f"num_return_sequences ({self.num_return_sequences}) cannot exceed "
                              f"num_beams ({self.num_beams}); raise num_beams")
        if self.num_beams == 1 and not self.force_words and self.num_return_sequences > self.best_of:
            raise ConfigError(f"num_return_sequences ({self.num_return_sequences}) cannot exceed "
                              f"best_of ({self.best_of}); raise best_of")
        if self.best_of > 1 and self.num_beams > 1:
            raise ConfigError("best_of and num_beams cannot be combined; choose one strategy")
        if self.best_of > 1 and self.temperature == 0:
            raise ConfigError("best_of > 1 needs sampling (temperature > 0): greedy samples are all "
                              "the same")
        if not math.isfinite(self.length_penalty):
            raise ConfigError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if any(not isinstance(w, str) or not w for w in self.force_words):
            raise ConfigError(f"force_words must be non-empty strings, got {self.force_words!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= SEED_MAX):
            # Row j draws from seed + j (step.make_generator); torch takes at most 2**64 - 1.
            raise ConfigError(f"seed must be an integer from 0 to {SEED_MAX} (2**63 - 1), got "
                              f"{self.seed!r}; pass a smaller seed")
        self.stop = check_stops(self.stop)
        self._check_constraint()
        for name in ("stop_token_ids", "banned_token_ids"):
            bad = [i for i in getattr(self, name)
                   if not isinstance(i, int) or i < 0 or (vocab_size is not None and i >= vocab_size)]
            if bad:
                raise ConfigError(f"{name} holds ids outside the vocabulary (0..{(vocab_size or 0) - 1}): {bad}")
        self.processor_settings().validate(vocab_size)
        return self

    def _check_constraint(self) -> None:
        from lmstack.infer.structured.compile import ENGINES, constraint_from

        if self.constraint_engine not in ENGINES:
            raise ConfigError(f"constraint_engine must be one of {', '.join(ENGINES)}, got "
                              f"{self.constraint_engine!r}")
        _int_at_least("json_whitespace", self.json_whitespace, -1)
        if constraint_from(self) is not None and self.ignore_eos:
            raise ConfigError("ignore_eos cannot be combined with a constraint: the constraint "
                              "decides where the reply ends")

    @classmethod
    def from_kwargs(cls, base: GenerationConfig | None = None, **settings: Any) -> GenerationConfig:
        """A config from keyword settings (unknown names are a clear error), on top of `base`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown generation setting(s) {unknown}; known: {sorted(known)}")
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base else {}
        values.update(settings)
        return cls(**values)


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
