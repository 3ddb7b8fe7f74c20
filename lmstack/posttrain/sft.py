"""Supervised fine-tuning batches and their loss, for the trainer's loop (lmstack/train/loop.py).

The loop takes any loader with `next_batch`, `epoch_batches` and `state_dict`/`load_state_dict`
and any batch function `loss_fn(model, batch) -> (summed loss, trained-target count)`
(lmstack/train/objective.py). `SFTLoader` deals packed rows (sft_data.py) as
`(input_ids, labels, position_ids, segment_ids)` batches and `sft_loss` scores one: the model
reads a packed row with `segment_ids` and `position_ids` (models/gpt.py: block-diagonal causal
attention, positions restarting per example), so packed examples score exactly what they score
alone (tests/posttrain/test_sft_packing.py). The loop divides a step's summed loss by the
step's trained-target count, so a micro-batch with few trained tokens weighs what it holds.

    rows = pack(truncate(load_sft_examples(path, tok, template), max_len)[0], max_len)
    loader = SFTLoader(rows, batch_size=8, max_len=max_len, pad_id=tok.eos_id or 0, seed=0)
    input_ids, labels, position_ids, segment_ids = loader.next_batch()

Run the tests: `pytest lmstack/posttrain/sft.py --doctest-modules`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

from lmstack.errors import ConfigError
from lmstack.models.protocol import next_token_loss
from lmstack.posttrain.sft_data import collate
from lmstack.train.objective import count_targets


class SFTLoader:
    """Packed rows in a seeded order per epoch, dealt to ranks, resumable from its state.

    >>> from lmstack.posttrain.sft_data import Example, pack
    >>> rows = pack([Example([1, 2, 3], [0, 1, 1], f"e{i}") for i in range(5)], max_len=2)
    >>> a = SFTLoader(rows, batch_size=2, max_len=2, seed=1)
    >>> _ = a.next_batch(); state = a.state_dict(); x = a.next_batch()[0]
    >>> b = SFTLoader(rows, batch_size=2, max_len=2, seed=1); b.load_state_dict(state)
    >>> bool((b.next_batch()[0] == x).all())
    True

    A subclass deals other items the same way: it names them (`what`) and collates them
    (`collate`); pair_loader.py's PairLoader deals preference pairs.
    """

    what = "packed rows"  # what the items are, for errors

    def __init__(self, rows: Sequence, batch_size: int, max_len: int, pad_id: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(rows) < batch_size * world_size:
            raise ConfigError(f"{len(rows)} {self.what} are fewer than one batch "
                              f"({batch_size} x {world_size} ranks); lower batch_size")
        self.rows, self.batch_size, self.max_len, self.pad_id = list(rows), batch_size, max_len, pad_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0  # the next batch: its epoch and index within it

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)  # same on every rank
        return order

    def collate(self, items: list) -> tuple[torch.Tensor, ...]:
        """A batch of items: (input_ids, labels, position_ids, segment_ids), (B, max_len) each."""
        return collate(items, self.max_len, self.pad_id)

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """The next training batch (`collate` of batch_size items); epochs wrap."""
        per_step = self.batch_size * self.world_size
        if (self.position + 1) * per_step > len(self.rows):
            self.epoch, self.position = self.epoch + 1, 0  # the incomplete tail is skipped
        start = self.position * per_step + self.rank * self.batch_size
        picked = self._order(self.epoch)[start:start + self.batch_size]
        self.position += 1
        return self.collate([self.rows[i] for i in picked])

    def epoch_batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's batches of every row in order, the last one possibly short (for eval);
        the position does not move."""
        per_step = self.batch_size * self.world_size
        for start in range(0, len(self.rows), per_step):
            mine = self.rows[start + self.rank * self.batch_size:][:self.batch_size]
            if mine:
                yield self.collate(mine)

    def state_dict(self) -> dict:
        """Where the loader is, for a checkpoint."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's state."""
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]


def sft_loss(model: torch.nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over the trained targets, their count) of a collated batch
    (input_ids, labels, position_ids, segment_ids); untrained labels (-100) count nothing."""
    input_ids, labels, position_ids, segment_ids = batch
    logits = model(input_ids, segment_ids=segment_ids, position_ids=position_ids)  # (B, T, V)
    return next_token_loss(logits, labels, reduction="sum"), count_targets(labels)
