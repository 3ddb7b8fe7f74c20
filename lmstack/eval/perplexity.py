"""Perplexity and bits per byte of a language model on held-out text, with a sliding window.

    lmstack eval --model runs/train --data held_out.txt [--stride 64]

The text is encoded with the model's tokenizer and `<|endoftext|>` (else the bos token) is put
in front as context, so every token of the text is scored, the first one too (the training
shards separate documents the same way). The result is

- loss: mean negative log-likelihood per token, in nats; ppl = exp(loss);
- bpb, bits per byte: total nats / ln 2 / UTF-8 bytes of the scored tokens (special tokens
  count 0 bytes). It does not depend on the tokenizer, so models with different vocabularies
  compare (Gao et al. 2020, The Pile, section 4).

A transformer sees at most `block_size` tokens. For longer text this uses the sliding window of
Hugging Face's "Perplexity of fixed-length models" guide: windows of `block_size` tokens whose
starts advance by `stride`; each window scores only the tokens no earlier window scored, so
every token is scored exactly once, with between block_size - stride and block_size - 1 tokens
of context (all that precede it in the first window). stride == block_size is the fast,
pessimistic split into disjoint chunks; a smaller stride gives more context per token at
block_size / stride times the compute. Models without a context limit (RNNs, n-grams) instead
read the whole text in chunks through their cache — the hidden state carries everything.

    >>> sliding_windows(10, block_size=4, stride=2)  # (begin, end, first scored position)
    [(0, 4, 0), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    >>> round(bits_per_byte(total_nats=math.log(2) * 12, total_bytes=6), 6)
    2.0
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from lmstack.errors import ConfigError, DataError
from lmstack.models.directory import load_model, load_tokenizer
from lmstack.models.installed import resolve_model
from lmstack.models.metrics import bits_per_byte
from lmstack.models.protocol import model_device, next_token_loss
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.special import ENDOFTEXT

CHUNK = 512  # tokens per forward when streaming an unbounded model through its cache
DEFAULT_WINDOW = 2048  # a long context (SmolLM2's 8192) scored in full windows needs gigabytes
LOGITS_BYTES = 1 << 30  # windows batched together hold at most this much fp32 logits


def sliding_windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over positions 0..n_tokens-1 as (begin, end, first scored); each scored once.

    >>> sliding_windows(5, block_size=8, stride=8)  # fits in one window: one full forward
    [(0, 5, 0)]
    >>> sliding_windows(7, block_size=3, stride=3)
    [(0, 3, 0), (3, 6, 3), (6, 7, 6)]
    """
    if block_size < 1 or not 1 <= stride <= block_size:
        raise ConfigError(f"need 1 <= stride <= block_size, got stride {stride} and block_size "
                          f"{block_size}; a stride above block_size would skip tokens")
    windows, scored_to, begin = [], 0, 0
    while scored_to < n_tokens:
        end = min(begin + block_size, n_tokens)
        windows.append((begin, end, scored_to))
        scored_to, begin = end, begin + stride
    return windows


def _windowed_nll(model, inputs: torch.Tensor, targets: torch.Tensor, block_size: int,
                  stride: int, batch_size: int) -> torch.Tensor:
    """NLL of every target, scoring each once inside sliding windows of the inputs."""
    nll = torch.empty(len(targets), dtype=torch.float32)
    windows = sliding_windows(len(inputs), block_size, stride)
    i = 0
    vocab = getattr(model.config, "vocab_size", 1)
    batch_size = max(1, min(batch_size, LOGITS_BYTES // (4 * block_size * vocab)))
    while i < len(windows):
        # Batch consecutive windows of one length (all but the last are block_size long).
        length = windows[i][1] - windows[i][0]
        group = [windows[i]]
        while (i + len(group) < len(windows) and len(group) < batch_size
               and windows[i + len(group)][1] - windows[i + len(group)][0] == length):
            group.append(windows[i + len(group)])
        x = torch.stack([inputs[b:e] for b, e, _ in group])
        y = torch.stack([targets[b:e] for b, e, _ in group])
        window_nll = next_token_loss(model(x), y, reduction="none").cpu()
        for row, (b, e, first) in enumerate(group):
            nll[first:e] = window_nll[row, first - b:]
        i += len(group)
    return nll


def _streamed_nll(model, inputs: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """NLL of every target, feeding the inputs in chunks through the model's cache."""
    cache = model.new_cache(1)
    parts = [next_token_loss(model(inputs[s:s + chunk][None], cache=cache), targets[s:s + chunk][None],
                             reduction="none")[0]
             for s in range(0, len(inputs), chunk)]
    return torch.cat(parts).cpu()


def context_id(tokenizer: Tokenizer) -> int:
    """The id put before the text so its first token is scored too: the document separator
    <|endoftext|> our shards use (SmolLM2's pretraining data too), else the model's bos."""
    found = tokenizer.special_tokens.get(ENDOFTEXT, tokenizer.bos_id)
    if found is None:
        raise ConfigError("the tokenizer has neither <|endoftext|> nor a bos token to put "
                          "before the text; the first token could not be scored")
    return found


@torch.no_grad()
def evaluate_text(model, tokenizer: Tokenizer, text: str, block_size: int | None = None,
                  stride: int | None = None, batch_size: int = 8) -> dict[str, float]:
    """Tokens, bytes, loss (nats/token), ppl and bpb of `model` on `text` (see module doc).

    block_size: the window (default: the model's context up to DEFAULT_WINDOW; unbounded models
    stream the text).
    stride: how far windows advance (default block_size // 2; unused when streaming).
    """
    ids = tokenizer.encode(text, allowed_special="all")
    if not ids:
        raise DataError("the evaluation text is empty: give text with at least one token")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    limit = getattr(model.config, "block_size", None)
    if block_size is not None and limit is not None and block_size > limit:
        raise ConfigError(f"block_size {block_size} exceeds the model's context {limit}; "
                          f"use block_size <= {limit}")
    block_size = block_size or (min(limit, DEFAULT_WINDOW) if limit else None)
    device = model_device(model)
    seq = torch.tensor([context_id(tokenizer), *ids], dtype=torch.long, device=device)
    inputs, targets = seq[:-1], seq[1:]
    was_training = model.training
    model.eval()
    try:
        if block_size is None:
            nll = _streamed_nll(model, inputs, targets, CHUNK)
        else:
            stride = stride if stride is not None else max(1, block_size // 2)
            nll = _windowed_nll(model, inputs, targets, block_size, stride, batch_size)
    finally:
        model.train(was_training)
    total_nats = float(nll.double().sum())
    n_bytes = int(torch.tensor(tokenizer.byte_lengths())[targets.cpu()].sum())
    loss = total_nats / len(ids)
    return {"tokens": len(ids), "bytes": n_bytes, "loss": loss,
            "ppl": math.exp(min(loss, 700.0)), "bpb": bits_per_byte(total_nats, n_bytes)}


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of an evaluation file, with errors that say what is wrong."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise DataError(f"evaluation file {p} {what}; pass a UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 text ({e}); convert it to UTF-8") from None
    if not text:
        raise DataError(f"evaluation file {p} is empty; give it some held-out text")
    return text


def evaluate_model_dir(model_dir: str | os.PathLike, data_file: str | os.PathLike,
                       block_size: int | None = None, stride: int | None = None,
                       batch_size: int = 8, device: str = "cpu", adapt=None) -> dict[str, float]:
    """`evaluate_text` for a model (a directory, a GGUF file or a short name such as
    `smollm2`) and its own tokenizer, on a text file; `adapt(model)` changes the model as
    loaded (a LoRA adapter merged: posttrain hands it down through cli.py)."""
    d = resolve_model(model_dir)
    if not d.exists():
        raise ConfigError(f"model {d} does not exist; train one with `lmstack train` or point "
                          "--model at a model directory or a .gguf file")
    text = read_text(data_file)
    tok = load_tokenizer(d)
    if tok is None:
        raise ConfigError(f"{d} has no tokenizer (no tokenizer.json); copy the tokenizer the "
                          "model was trained with into it")
    model = load_model(d, device=device)
    if adapt is not None:
        model = adapt(model)
    return evaluate_text(model, tok, text, block_size, stride, batch_size)
