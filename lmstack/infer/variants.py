"""Row variants: rows of one batch that run different versions of one model.

Serving several LoRA adapters over one base (lmstack/posttrain/peft/multi_lora.py, after S-LoRA,
Sheng et al. 2023, and Punica, Chen et al. 2023) needs every row of a batch to run its own
adapter. The engine knows a variant only as a number per row: 0 is the model as loaded, 1..N
the variants it was given (`RowVariants.names`). Whoever batches rows — the scheduler's decode
step, `prefill`, the prefix cache — says which row runs which before each forward pass
(`running(model, ids)`); only the layers that differ between variants read it, and a model
without variants ignores it.

Why shared state rather than a forward argument: the language model protocol (ids, cache,
lengths) stays the same for every model and every decoder, and this layer needs to know
nothing of LoRA. vLLM's LoRA layers work the same way: its model runner sets the per-token
adapter indices before each step, and the layers read them (its punica wrapper).

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 2)
    >>> model.row_variants = RowVariants(("a", "b"))
    >>> with running(model, [0, 2, 1]):
    ...     model.row_variants.ids
    tensor([0, 2, 1])
    >>> model.row_variants.ids is None   # after the pass: every row is the base again
    True
    >>> variant_id(model, "b"), variant_id(model, None)
    (2, 0)

Tests: `pytest tests/posttrain/test_multi_lora.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lmstack.errors import ConfigError
from lmstack.models.protocol import model_device


@dataclass
class RowVariants:
    """The variants a model can run per row, and which row runs which in the pass now running."""

    names: tuple[str, ...]             # variants 1..N (0 is the model as loaded)
    ids: torch.Tensor | None = None    # (B,) each row's variant; None: every row runs 0
    rows: tuple[int, ...] = ()         # the same ids as a tuple: a key for what layers derive from them
    same: int | None = None            # the variant every row runs, when they all agree


def row_variants(model) -> RowVariants | None:
    """The model's variants (`model.row_variants`), or None for a model that has none."""
    return getattr(model, "row_variants", None)


def variant_id(model, name: str | None) -> int:
    """The number of the variant called `name` (None: 0, the model as loaded); ConfigError
    naming the variants there are for any other name."""
    if name is None:
        return 0
    variants = row_variants(model)
    names = variants.names if variants is not None else ()
    if name not in names:
        raise ConfigError(f"no variant {name!r} of this model; it has {list(names) or 'none'}")
    return names.index(name) + 1


@contextmanager
def running(model, ids: Sequence[int] | None) -> Iterator[None]:
    """Within the block, row i of the model's forward passes runs variant `ids[i]`; a model
    without variants, or rows all 0, run the model as loaded (nothing is set)."""
    variants = row_variants(model)
    if ids is not None and any(ids) and variants is None:
        raise ConfigError("rows ask for variants, but this model has none loaded")
    if variants is None or ids is None or not any(ids):
        yield
        return
    variants.rows = tuple(int(i) for i in ids)
    variants.ids = torch.tensor(variants.rows, dtype=torch.long, device=model_device(model))   # (B,)
    # One check here instead of one per layer: a batch whose rows agree takes plain matmuls.
    variants.same = ids[0] if all(i == ids[0] for i in ids) else None
    try:
        yield
    finally:
        variants.ids, variants.rows, variants.same = None, (), None
