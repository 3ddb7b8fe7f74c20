"""The decode loop for greedy and ancestral sampling: prefill once, then one token per step
from a preallocated KV cache, for a batch of prompts of different lengths, streaming as it goes.

1. Prefill: the prompts, right-padded to one length, go through the model in ONE forward pass
   with `lengths`, so each row's cache holds only its own tokens and each row continues from its
   own position (models/kv_cache.py). Right padding needs no extra mask in this pass: attention
   is causal, so a real token never sees the pads that follow it. Rows of one prompt (n samples,
   k RL rollouts) share it: the prompt is computed once and its cache row copied to each.
2. Decode: every step hands the logits of each row's last position to the one decode step
   (step.py: processors, argmax or a seeded draw, logprobs, stop rules) and feeds all the new
   tokens back as a (B, 1) batch.
3. Stop: a row finishes on an end-of-sequence or stop id (finish_reason "stop"; the id is not
   returned), on a stop string (text cut where it begins, "stop"), at max_new_tokens or when the
   model's context is full ("length"). Finished rows leave the batch (`cache.select`), so the
   remaining rows get faster.

Run the tests: `pytest tests/infer/test_generate.py`.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from lmstack.errors import ConfigError
from lmstack.models.protocol import model_device
from lmstack.infer.step import Row, step
from lmstack.infer.variants import running


def context_length(model) -> int | None:
    """The most positions the model can attend over (None for RNNs and n-grams: unbounded)."""
    return getattr(model.config, "block_size", None)


def as_prompts(prompt: Any) -> tuple[bool, list]:
    """(whether it is one prompt, the list of prompts): a string or a sequence of ids is one
    prompt; a list of those, or a 2-D tensor or array of ids, is a batch.

    >>> as_prompts("hi"), as_prompts([1, 2]), as_prompts(["a", [3]])
    ((True, ['hi']), (True, [[1, 2]]), (False, ['a', [3]]))
    >>> as_prompts(torch.tensor([[1, 2], [3, 4]]))
    (False, [[1, 2], [3, 4]])
    """
    if hasattr(prompt, "ndim") and hasattr(prompt, "tolist"):  # a torch tensor or numpy array
        if prompt.ndim not in (1, 2):
            raise ConfigError(f"a prompt tensor must be 1-D (one prompt) or 2-D (a batch) of token "
                              f"ids, got shape {tuple(prompt.shape)}")
        prompt = prompt.tolist()
    if isinstance(prompt, str) or (len(prompt) > 0 and isinstance(prompt[0], numbers.Integral)):
        return True, [prompt]
    return False, [p.tolist() if hasattr(p, "tolist") else p for p in prompt]


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


def distinct(keys: Sequence) -> tuple[list, list[int]]:
    """The distinct keys in first-seen order, and the index of each key among them.

    >>> distinct([(1, 2), (3,), (1, 2), (1, 2)])
    ([(1, 2), (3,)], [0, 1, 0, 0])
    """
    first: dict = {}
    order = [first.setdefault(key, len(first)) for key in keys]
    return list(first), order


@torch.inference_mode()
def prefill(model, prompts: Sequence[Sequence[int]], extra: int, prefix_cache=None,
            variants: Sequence[int] | None = None, share: bool = True):
    """Run the prompts through the model into a fresh cache; return (cache, last logits (B, V)).
    With a `PrefixCache` (prefix_cache.py), prefixes computed before are reused. `variants`:
    the variant each prompt runs (variants.py; None: the model as loaded). `share`: a prompt
    that repeats (n samples of one request, k rollouts of one RL prompt) is computed once and
    its cache row copied (`cache.select` with repeats), not prefilled once per row."""
    ctx = context_length(model)
    if prefix_cache is not None and prefix_cache.supports(model):
        return prefix_cache.prefill(model, prompts, extra, ctx, variants)
    if share:
        unique, order = distinct(list(zip(variants or [0] * len(prompts), map(tuple, prompts))))
        if len(unique) < len(prompts):
            cache, logits = prefill(model, [p for _, p in unique], extra, None,
                                    None if variants is None else [v for v, _ in unique], share=False)
            cache.select(order)  # each distinct prompt's row, repeated for each of its samples
            return cache, logits[order]
    longest = max(len(p) for p in prompts)
    max_len = longest + max(extra, 1)
    cache = model.new_cache(len(prompts), max_len if ctx is None else min(ctx, max_len))
    ids, lengths = right_pad(prompts)
    ragged = bool((lengths != longest).any())
    # Only each row's last logits are needed: `last_only` skips the vocabulary head over the
    # other positions (for a 512-token GPT-2 prompt, ~40 of the forward's ~130 GFLOP).
    with running(model, variants):
        logits = model(ids.to(model_device(model)), cache=cache, lengths=lengths if ragged else None,
                       last_only=True)                                # (B, 1, V)
    return cache, logits[:, -1].float()


@torch.inference_mode()  # not just no_grad: also skips autograd's version counters on every op
def decode(model, rows: list[Row], prefix_cache=None, share: bool = True) -> Iterator[tuple[Row, str]]:
    """Generate for every row (their plans choose alike: one request's rows); yield (row, new
    text) as text becomes safe to show, and once more with the rest of the text (maybe "")
    when the row finishes (`row.finish_reason` set). `share`: rows of one prompt share its
    prefill (`prefill`); False prefills every row on its own (for comparison)."""
    max_new_tokens = max(row.plan.cfg.max_new_tokens for row in rows)
    if max_new_tokens == 0:
        for row in rows:
            row.finish_reason = "length"
            yield row, ""
        return
    cache, logits = prefill(model, [r.prompt for r in rows], max_new_tokens, prefix_cache, share=share)
    active = list(rows)
    while active:
        deltas = step(logits, active)
        for row, delta in zip(active, deltas):
            if delta or row.finish_reason is not None:
                yield row, delta
        keep = [i for i, row in enumerate(active) if row.finish_reason is None]
        if not keep:
            return
        if len(keep) < len(active):
            cache.select(keep)
            active = [active[i] for i in keep]
        x = torch.tensor([[row.tokens[-1]] for row in active], dtype=torch.long)   # (B, 1)
        logits = model(x.to(logits.device), cache=cache)[:, -1].float()            # (B, V)
