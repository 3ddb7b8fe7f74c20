"""The reference model of DPO (and of a KL penalty): a frozen copy of the starting policy, or,
when the policy trains LoRA adapters, the policy itself with its adapters switched off — the
base is the starting point, so no second copy of the weights is kept (as trl and Hugging Face
PEFT do with `disable_adapter`).

    reference = frozen_copy(policy)                 # full fine-tuning: a second model
    with adapters_disabled(policy):                 # LoRA: the same model, base weights only
        ref = reference_logprobs(policy, input_ids, labels)

`batch_preference_loss` is one preference step's loss for the trainer: the policy's and the
reference's log-probabilities of a `collate_pairs` batch, the configured loss, summed over the
pairs. Rafailov et al. 2023 (DPO) for the reference's role; Hu et al. 2021 (LoRA).

Run the tests: `pytest tests/posttrain/test_preference_loss.py tests/posttrain/test_reference.py`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from lmstack.errors import ConfigError
from lmstack.posttrain.logprobs import PairLogprobs, pair_logprobs, reference_logprobs
from lmstack.posttrain.peft.lora import lora_layers
from lmstack.posttrain.preference_loss import (
    PreferenceLossConfig,
    PreferenceOutput,
    method,
    preference_loss,
)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` that never trains: no gradients, eval mode."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, every LoRA layer of `model` computes its base layer alone (its update scaled by
    0); the scales come back on exit. ConfigError if there is no unmerged LoRA layer."""
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the reference is 'the base with adapters disabled', but the model has "
                          "no LoRA layers; pass a reference model (reference.frozen_copy)")
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ConfigError(f"LoRA layers {merged[:3]} are merged into their weights, so the base "
                          "cannot be recovered by switching them off; unmerge_lora first")
    scales = {name: layer.scaling for name, layer in layers.items()}
    try:
        for layer in layers.values():
            layer.scaling = 0.0  # y = W x + b + 0 · B A x: the base layer's output exactly
        yield model
    finally:
        for name, layer in layers.items():
            layer.scaling = scales[name]


def _vocab_size(model: nn.Module) -> int | None:
    """The model's vocabulary, read through a DDP wrapper (which has no `config`)."""
    while not hasattr(model, "config") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return getattr(getattr(model, "config", None), "vocab_size", None)


def check_reference(policy: nn.Module, reference: nn.Module) -> None:
    """ConfigError when the reference cannot score the policy's tokens: another vocabulary."""
    pv, rv = _vocab_size(policy), _vocab_size(reference)
    if pv != rv:
        raise ConfigError(f"the policy's vocabulary ({pv} ids) differs from the reference's ({rv}); "
                          "the reference must be the policy's starting model, with its tokenizer")


def batch_reference(model: nn.Module, reference: nn.Module | None, input_ids: torch.Tensor,
                    labels: torch.Tensor) -> PairLogprobs:
    """The reference's log-probabilities: `reference`, or `model` with its adapters off."""
    if reference is not None:
        check_reference(model, reference)
        return reference_logprobs(reference, input_ids, labels)
    with adapters_disabled(model):
        return reference_logprobs(model, input_ids, labels)


def batch_preference_loss(model: nn.Module, batch: Sequence[torch.Tensor], cfg: PreferenceLossConfig,
                          reference: nn.Module | None = None) -> tuple[torch.Tensor, int, PreferenceOutput]:
    """(loss summed over the pairs, the pair count, the output with its metrics) of a
    `collate_pairs` batch (input_ids, labels, lengths). dpo and ipo take the reference model,
    or none for a LoRA policy (its adapters switched off)."""
    input_ids, labels = batch[0], batch[1]
    ref = None
    if method(cfg.loss).needs_reference:
        ref = batch_reference(model, reference, input_ids, labels)
    out = preference_loss(cfg, pair_logprobs(model, input_ids, labels), ref)
    return out.losses.sum(), out.losses.size(0), out
