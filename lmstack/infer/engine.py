"""The inference engine: load a model directory once, then generate, stream and score.

    from lmstack.infer import Engine
    engine = Engine.load("runs/quickstart")
    print(engine.generate("def fibonacci(", temperature=0.8, top_p=0.95, max_new_tokens=64).text)
    for delta in engine.stream("import os", temperature=0):
        print(delta, end="", flush=True)
    engine.score("The capital of France is", " Paris")       # log P(continuation | prompt)

Prompts are strings (encoded with the model's tokenizer; special tokens written in them, like
<|endoftext|>, are allowed) or lists of token ids. Every setting of `GenerationConfig` is a
keyword argument. What each strategy does and how stopping works: step.py (the one decode
step every strategy shares), sampling.py (the greedy and sampling loop), beam.py (beam and
constrained beam search), stopping.py (stop strings).

The engine works with every model that follows the language model protocol (GPT, LSTM/GRU,
n-gram), because it only calls `model(ids, cache=..., lengths=...)` and `cache.select(rows)`.

Prompt length: a prompt must leave room for at least one new token in the model's context
(block_size); a longer prompt is a clear error, never silently truncated. Generation ends with
finish_reason "length" when the context fills up.
"""

from __future__ import annotations

import math
import os
from functools import cached_property
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.infer.beam import beam_search
from lmstack.infer.config import GenerationConfig
from lmstack.infer.fuse import decode_layout, prepare_decode  # noqa: F401 (decode_layout: re-exported)
from lmstack.infer.sampling import as_prompts, check_prompts, context_length, decode
from lmstack.infer.scoring import Score, score_continuation
from lmstack.infer.step import Completion, DecodePlan, new_rows
from lmstack.models.protocol import model_device
from lmstack.tokenizer import ENDOFTEXT, Tokenizer

Prompt = Union[str, Sequence[int]]
Scorer = Callable[[str, Completion], float]


class Engine:
    """A model and its tokenizer, ready to generate."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer | None = None,
                 defaults: GenerationConfig | None = None, eos_ids: list[int] | None = None,
                 prefix_cache=None) -> None:
        self.model = model.eval() if hasattr(model, "eval") else model
        self.prefix_cache = prefix_cache  # a PrefixCache (prefix_cache.py) reuses prompt prefixes
        self.tokenizer = tokenizer
        # End of sequence: generation_config.json's ids for HF models, else <|endoftext|>.
        if eos_ids is None and tokenizer is not None and ENDOFTEXT in tokenizer.special_tokens:
            eos_ids = [tokenizer.special_tokens[ENDOFTEXT]]
        self.eos_ids = list(eos_ids or [])
        self.defaults = defaults or GenerationConfig()
        self.vocab_size = model.config.vocab_size

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "cpu", prefix_cache=None,
             dtype: str | None = None, adapt: Callable[[torch.nn.Module], torch.nn.Module] | None = None
             ) -> Engine:
        """Load a model directory in any format models/directory.py knows: ours, a quantized one
        (`lmstack quantize`: into its int8/int4 layers), a Hugging Face one. `dtype="bf16"` runs
        the model in bfloat16 (weights, activations, KV cache; the decoder reads float32 logits).
        `adapt(model)` changes the model as loaded, before its dtype and decode preparation (a
        LoRA adapter merged or attached: posttrain/peft/multi_lora.py, handed down from above)."""
        from lmstack.models.directory import load_model, load_tokenizer, model_eos_ids

        model = load_model(directory, device=device)
        if adapt is not None:
            model = adapt(model)
        if dtype is not None:
            from lmstack.infer.quantize import DTYPES

            if dtype not in DTYPES:
                raise ConfigError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
            model = model.to(DTYPES[dtype])
        prepare_decode(model)  # fused projections, oneDNN fp32 linears (fuse.py)
        return cls(model, load_tokenizer(directory), eos_ids=model_eos_ids(directory),
                   prefix_cache=prefix_cache)

    # ---- prompts and settings ---------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (a string needs the tokenizer)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ConfigError("this model has no tokenizer.json; pass prompts as token ids")
            return self.tokenizer.encode(prompt, allowed_special="all")
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ConfigError(f"prompt ids {bad[:5]} are outside the vocabulary 0..{self.vocab_size - 1}")
        return ids

    def config(self, config: GenerationConfig | None = None, **settings: Any) -> GenerationConfig:
        """The settings of one call: `config` (or the engine's defaults) updated by keywords."""
        return GenerationConfig.from_kwargs(config or self.defaults, **settings).validate(self.vocab_size)

    def stop_ids(self, cfg: GenerationConfig) -> set[int]:
        """Ids that end a row: the end-of-sequence ids (unless ignore_eos) and `stop_token_ids`."""
        ids = set(cfg.stop_token_ids)
        if not cfg.ignore_eos:
            ids.update(self.eos_ids)
        return ids

    def word_sequences(self, words: Sequence[str]) -> list[list[int]]:
        """Token sequences of words, as written and after a space (how they occur mid-text)."""
        if words and self.tokenizer is None:
            raise ConfigError("banned_words and force_words need the model's tokenizer")
        out: list[list[int]] = []
        for w in words:
            for variant in (w, " " + w.lstrip()):
                ids = self.tokenizer.encode_ordinary(variant)
                if ids and ids not in out:
                    out.append(ids)
        return out

    def plan(self, cfg: GenerationConfig) -> DecodePlan:
        """The one-step plan of a validated config (step.py): processors, stop ids, reports,
        and the compiled structured-output constraint."""
        return DecodePlan.compile(cfg, self.stop_ids(cfg), self.word_sequences(cfg.banned_words),
                                  context_length(self.model), self.constraint(cfg))

    def constraint(self, cfg: GenerationConfig):
        """The config's structured-output constraint compiled against this model's vocabulary
        (structured/compile.py), or None; errors name the problem before any decoding."""
        from lmstack.infer.structured.compile import compile_constraint, constraint_from

        constraint = constraint_from(cfg)
        if constraint is None:
            return None
        bound = None if cfg.json_whitespace < 0 else cfg.json_whitespace
        return compile_constraint(constraint, self.token_vocab, cfg.constraint_engine, bound)

    @cached_property
    def token_vocab(self):
        """The vocabulary as constraint engines see it: each id's bytes, the end ids."""
        from lmstack.infer.structured.vocab import TokenVocab

        if self.tokenizer is None:
            raise ConfigError("structured output (json_schema, regex, grammar, choices) needs "
                              "the model's tokenizer")
        return TokenVocab.from_tokenizer(self.tokenizer, self.vocab_size, self.eos_ids or None)

    def new_decoder(self):
        """A fresh incremental text decoder for one row (None without a tokenizer)."""
        return self.tokenizer.decoder() if self.tokenizer is not None else None

    # ---- generation ---------------------------------------------------------------------------

    def generate(self, prompt: Prompt | Sequence[Prompt], config: GenerationConfig | None = None,
                 scorer: Scorer | None = None, **settings: Any) -> Any:
        """Generate for one prompt (-> a `Completion`, or a list if num_return_sequences > 1)
        or for a list of prompts (-> a list of those, one per prompt).

        `scorer(prompt_text, completion) -> float` ranks best-of-N samples instead of their
        mean log-probability (e.g. a reward model)."""
        cfg = self.config(config, **settings)
        single, prompts = as_prompts(prompt)
        ids = [self.encode(p) for p in prompts]
        check_prompts(ids, self.model)
        if cfg.strategy == "beam":
            groups = [self._beam(p, cfg) for p in ids]
        else:
            groups = self._sample(ids, cfg, scorer, prompts)
        for i, group in enumerate(groups):
            for c in group:
                c.index = i
        out = [g[0] if cfg.num_return_sequences == 1 else g for g in groups]
        return out[0] if single else out

    def _sample(self, ids: list[list[int]], cfg: GenerationConfig, scorer: Scorer | None,
                prompts: list[Prompt]) -> list[list[Completion]]:
        """Greedy, sampling and best-of-N: best_of rows per prompt, the best kept (the plan
        computes log-probabilities whenever best_of > 1: they are the default ranking)."""
        n = max(cfg.best_of, cfg.num_return_sequences)
        rows = new_rows(ids, self.plan(cfg), n, self.new_decoder)
        for _ in decode(self.model, rows, self.prefix_cache):
            pass
        groups: list[list[Completion]] = [[] for _ in ids]
        for row in rows:
            groups[row.index].append(row.completion())
        if n > 1:
            for i, group in enumerate(groups):
                text = prompts[i] if isinstance(prompts[i], str) else ""
                groups[i] = rank_samples(group, cfg.num_return_sequences, scorer, text)
        return groups

    def _beam(self, prompt: list[int], cfg: GenerationConfig) -> list[Completion]:
        """Beam search (constrained when force_words is set) for one prompt."""
        plan = self.plan(cfg)
        hyps = beam_search(
            self.model, prompt, num_beams=max(cfg.num_beams, cfg.num_return_sequences),
            max_new_tokens=cfg.max_new_tokens, stop_ids=plan.stop_ids,
            length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping,
            num_return_sequences=cfg.num_return_sequences,
            force=self._force_sequences(cfg.force_words), max_len=plan.ctx, plan=plan)
        out = []
        for h in hyps:
            text, reason = self._text(h.tokens), h.finish_reason
            for s in cfg.stop:
                if s in text:
                    text, reason = text[:text.index(s)], "stop"
            lps = h.token_logprobs[:len(h.tokens)]
            out.append(Completion(text, h.tokens, reason, len(prompt), lps if cfg.logprobs else [],
                                  [], h.score))
        return out

    def _force_sequences(self, words: Sequence[str]) -> list[list[int]]:
        """One token sequence per forced word: the form with a leading space if it fits mid-text."""
        if words and self.tokenizer is None:
            raise ConfigError("force_words needs the model's tokenizer")
        return [self.tokenizer.encode_ordinary(w) for w in words]

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens) if self.tokenizer is not None else ""

    def stream(self, prompt: Prompt, config: GenerationConfig | None = None,
               **settings: Any) -> Iterator[str]:
        """Yield the text of one completion as it is generated, in UTF-8-safe pieces that
        never include a stop string. Beam search and best-of-N can only yield at the end."""
        cfg = self.config(config, **settings)
        if cfg.strategy in ("beam", "best_of") or cfg.num_return_sequences > 1:
            result = self.generate(prompt, cfg)
            yield (result[0] if isinstance(result, list) else result).text
            return
        ids = [self.encode(prompt)]
        check_prompts(ids, self.model)
        rows = new_rows(ids, self.plan(cfg), 1, self.new_decoder)
        for _, delta in decode(self.model, rows, self.prefix_cache):
            if delta:
                yield delta
        self.last = rows[0].completion()  # the finish reason and tokens of the stream

    def speculative(self, draft: Any = None, **options: Any):
        """A `SpeculativeDecoder` over this engine (speculative.py): `draft=` a small Engine or
        model with the same tokenizer, or `prompt_lookup=n`, or `medusa=` heads; `gamma=`."""
        from lmstack.infer.speculative import SpeculativeDecoder

        return SpeculativeDecoder(self, draft, **options)

    # ---- scoring ------------------------------------------------------------------------------

    def score(self, prompt: Prompt, continuation: Prompt, top_logprobs: int = 0) -> Score:
        """Log-probability of `continuation` after `prompt`, per token and in total."""
        # as text, the continuation is encoded on its own (keep its leading space)
        return score_continuation(self.model, self.encode(prompt), self.encode(continuation), top_logprobs)

    def perplexity(self, text: str) -> dict[str, float]:
        """Perplexity and bits per byte of a text (sliding window past the context)."""
        from lmstack.eval.perplexity import evaluate_text

        if self.tokenizer is None:
            raise ConfigError("perplexity of a text needs the model's tokenizer")
        return evaluate_text(self.model, self.tokenizer, text)

    def next_token_distribution(self, prompt: Prompt, **settings: Any) -> torch.Tensor:
        """Probabilities (V,) of the next token after the processors (for teaching and tests)."""
        cfg = self.config(None, **settings)
        ids = self.encode(prompt)
        check_prompts([ids], self.model)
        with torch.inference_mode():
            logits = self.model(torch.tensor([ids], device=model_device(self.model)))[:, -1].float()
        processed = self.plan(cfg).process(logits, [ids], [[]])
        if cfg.temperature == 0:
            return F.one_hot(processed.argmax(-1), processed.size(-1)).float()[0]
        return F.softmax(processed, dim=-1)[0]


def rank_samples(samples: list[Completion], keep: int, scorer: Scorer | None = None,
                 prompt_text: str = "") -> list[Completion]:
    """Best-of-N's choice, for the engine and the server alike: the `keep` best samples, best
    first. With `scorer`, each sample's score becomes `scorer(prompt_text, sample)` (a reward
    model); else it is the mean log-probability the decode step left. A missing or NaN score
    ranks last; ties keep the order the samples were drawn in (the sort is stable).

    >>> a, b, c = (Completion(t, [], "stop", 0, score=s) for t, s in (("a", -2.0), ("b", None), ("c", -1.0)))
    >>> [x.text for x in rank_samples([a, b, c], 2)]
    ['c', 'a']
    >>> [x.text for x in rank_samples([a, b, c], 3, scorer=lambda p, x: len(p + x.text), prompt_text="..")]
    ['a', 'b', 'c']
    """
    if scorer is not None:
        for s in samples:
            s.score = float(scorer(prompt_text, s))
    ranked = sorted(samples, key=lambda s: -math.inf if s.score is None or math.isnan(s.score) else s.score,
                    reverse=True)
    return ranked[:keep]


def sample_text(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str = "", max_new_tokens: int = 120,
                temperature: float = 0.8, seed: int = 0) -> str:
    """A sample's text for a progress report: `prompt` (empty: start after <|endoftext|>)
    continued through the engine's one decode step. The model's train/eval mode is kept, so a
    training loop can call it between steps (`lmstack.train.train(cfg, sample=sample_text)`)."""
    was_training = model.training
    try:
        engine = Engine(model, tokenizer)
        ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
        ctx = context_length(model)
        ids = ids[-(ctx - 1):] if ctx else ids  # keep the end of a prompt that fills the context
        return engine.generate(ids, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed).text
    finally:
        model.train(was_training)

