"""What the training loop minimizes: a batch function, and the validation that scores it.

The loop (loop.py) knows batches only as tuples whose first two members are inputs and labels,
`(x, y, ...)`, with label -100 (`IGNORE_INDEX`) where a position is not trained, and a loss
function `loss_fn(model, batch) -> (summed loss, trained-target count)`:

- pretraining: `(x, y)` windows of the token stream and `lm_loss`, every position trained;
- supervised fine-tuning (lmstack/posttrain/sft.py): packed rows `(input_ids, labels,
  position_ids, segment_ids)`, trained on the assistant's tokens only, with its `sft_loss`.

A step's loss is the sum over its micro-batches (and ranks) divided by the step's trained-target
count, not a mean of micro-batch means: with a loss mask, a micro-batch of a few trained tokens
must not weigh as much as a full one (for pretraining the two are the same number).
`evaluate` counts targets and their bytes the same way, so bits per byte means the same for both.

    loss_sum, n = lm_loss(model, (x, y))       # nats summed over the n = B·T targets
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmstack.errors import ConfigError
from lmstack.models.directory import save_model
from lmstack.models.metrics import bits_per_byte
from lmstack.models.protocol import IGNORE_INDEX, next_token_loss
from lmstack.tokenizer import Tokenizer
from lmstack.train import distributed

Batch = Sequence[torch.Tensor]  # (inputs, labels, ...): labels[t] is -100 where t is not trained
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, int]]


def lm_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Pretraining's objective: next-token cross-entropy summed over every target of (x, y)."""
    x, y = batch
    return next_token_loss(model(x), y, reduction="sum"), y.numel()


def label_count(batch: Batch) -> int:
    """What a batch trains on when each trained label is one target: its labels other than -100."""
    return count_targets(batch[1])


@dataclass
class Objective:
    """A run's batch loss, what it counts, how it is validated and how checkpoints hold the model
    (pretraining's by default).

    Parameter-efficient fine-tuning trains a few parameters of a frozen base: its checkpoints
    keep only those (`trainable_only`) and write the model as an adapter (`write_model`), not
    a copy of the base. A preference or RL objective averages over pairs or rollouts, not
    tokens (`count`), validates with its own measures (`evaluate(run) -> {"val_loss", ...}`,
    every rank joins) and logs what its loss saw over the step (`report() -> {name: value}`,
    called once after every step; it resets what it gathered)."""

    loss_fn: LossFn = lm_loss
    trainable_only: bool = False
    write_model: Callable[[Path, torch.nn.Module], object] = save_model
    count: Callable[[Batch], int] = label_count  # what a step's summed loss is divided by
    evaluate: Callable[[object], dict] | None = None  # None: loss, perplexity and bits per byte
    report: Callable[[], dict] | None = None  # extra numbers for the step's log record


def autocast(cfg, device: torch.device):
    """The autocast context of cfg.precision (fp32: none)."""
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs CUDA (it relies on a gradient scaler); "
                          "use bf16 on CPU")
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_device(batch: Iterable, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Each member of a batch (numpy arrays or tensors) as a tensor on `device`."""
    return tuple(torch.as_tensor(a).to(device) for a in batch)


def count_targets(labels: torch.Tensor) -> int:
    """The trained targets of a batch's labels: those other than -100.

    >>> count_targets(torch.tensor([[-100, 5, 6], [-100, -100, 7]]))
    3
    """
    return int((labels != IGNORE_INDEX).sum())


def trained_bytes(labels: torch.Tensor, lengths: torch.Tensor) -> int:
    """The UTF-8 bytes the trained targets spell (special tokens count 0; -100 counts nothing).

    >>> trained_bytes(torch.tensor([[1, -100, 2]]), torch.tensor([0, 3, 5]))
    8
    """
    kept = labels[labels != IGNORE_INDEX]
    return int(lengths[kept.cpu()].sum())


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (requires_grad), by name: a PEFT checkpoint's model state."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def evaluate(model, loader, tok: Tokenizer, batches: int, device, cfg,
             d: distributed.Dist | None = None, loss_fn: LossFn = lm_loss) -> dict:
    """Validation loss, perplexity and bits per byte over the first `batches` val batches.

    Under torchrun every rank scores its own share of each batch (the loader deals batches by
    rank) and the sums are added up, so the result is that of one process with a batch
    world_size times larger: it does not depend on how many processes ran."""
    model.eval()
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    lengths = torch.from_numpy(np.array(tok.byte_lengths(), dtype=np.int64))
    for i, batch in enumerate(loader.epoch_batches()):
        if i == batches:
            break
        batch = to_device(batch, device)
        with autocast(cfg, device):
            nats, count = loss_fn(model, batch)
        total_nats += float(nats)
        total_tokens += count
        total_bytes += trained_bytes(batch[1], lengths)
    model.train()
    if d is not None:
        total_nats, total_tokens, total_bytes = distributed.all_sum(
            [total_nats, total_tokens, total_bytes], d)
    loss = total_nats / max(total_tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
            "val_bpb": bits_per_byte(total_nats, int(total_bytes))}
