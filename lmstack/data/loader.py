"""Next-token batches from memory-mapped shards: seeded, rank-aware and resumable.

A split's token stream is cut into non-overlapping windows of ``block_size + 1`` tokens
(window i starts at token ``i * block_size``, so consecutive windows share one token and no
target is wasted). A batch is ``batch_size`` windows; ``x`` is each window without its last
token and ``y`` without its first: ``y[b, t]`` is the token that follows ``x[b, t]``.

Each epoch visits the windows in a fresh permutation drawn from ``(seed, epoch)`` (or in
order with ``shuffle=False``), dealt round-robin to ``world_size`` ranks so the ranks'
shares are disjoint, as ``DistributedSampler`` does in PyTorch. Every rank gets the same
number of batches, so DDP ranks never wait on each other; the few windows that do not fill a
last batch are dropped for that epoch (a different few each epoch when shuffled).

The position is just ``(epoch, step)``: ``state_dict()`` saves it and ``load_state_dict()``
restores it, after which the loader yields exactly the batches it would have yielded.

Run it: ``python -m lmstack.data.loader DIR`` prints the first batch of a shard directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from lmstack.data.shards import ShardManifest, open_shards, read_tokens
from lmstack.errors import ConfigError, DataError
from lmstack.tokenizer import Tokenizer


class TokenLoader:
    """Yields (x, y) int64 arrays of shape (batch_size, block_size) forever, epoch after epoch."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        batch_size: int = 8,
        block_size: int = 256,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        tokenizer: Tokenizer | str | None = None,
    ):
        if batch_size < 1 or block_size < 1:
            raise ConfigError(f"batch_size={batch_size} and block_size={block_size} must both be >= 1")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must be in [0, world_size={world_size})")
        self.manifest: ShardManifest = open_shards(data_dir, tokenizer)
        self.tokens = read_tokens(data_dir, split, self.manifest)
        self.split, self.batch_size, self.block_size = split, batch_size, block_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.num_windows = max(0, (len(self.tokens) - 1) // block_size)
        self.batches_per_epoch = self.num_windows // world_size // batch_size
        if self.batches_per_epoch == 0:
            need = world_size * batch_size * block_size + 1
            raise DataError(
                f"split {split!r} of '{data_dir}' has {len(self.tokens)} tokens, fewer than the {need} one batch "
                f"on each of {world_size} rank(s) needs (world_size * batch_size * block_size + 1); "
                "lower batch_size or block_size, or prepare more data"
            )
        self.epoch, self.step = 0, 0
        self._order: np.ndarray | None = None

    def windows(self) -> np.ndarray:
        """This rank's window indices for the current epoch, in visiting order."""
        if self._order is None:
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_windows)
            else:
                order = np.arange(self.num_windows)
            self._order = order[self.rank :: self.world_size]
        return self._order

    def batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) batch number `step` of the current epoch on this rank."""
        windows = self.windows()[step * self.batch_size : (step + 1) * self.batch_size]
        index = (windows * self.block_size)[:, None] + np.arange(self.block_size + 1)
        chunk = np.asarray(self.tokens[index], dtype=np.int64)
        return chunk[:, :-1], chunk[:, 1:]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next (x, y) batch, moving to a new epoch when this one is used up."""
        if self.step >= self.batches_per_epoch:
            self.epoch, self.step, self._order = self.epoch + 1, 0, None
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            yield self.next_batch()

    def epoch_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every batch of the current epoch from its first, without moving the position (for eval)."""
        for step in range(self.batches_per_epoch):
            yield self.batch_at(step)

    def state_dict(self) -> dict[str, Any]:
        """The position and the settings it depends on, for a checkpoint."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "tokenizer_fingerprint": self.manifest.tokenizer_fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()` output; raise DataError if it belongs to other settings."""
        mine = self.state_dict()
        differ = [k for k in mine if k not in ("epoch", "step", "rank") and k in state and state[k] != mine[k]]
        if differ:
            pairs = ", ".join(f"{k}: saved {state[k]!r} vs now {mine[k]!r}" for k in differ)
            raise DataError(
                f"cannot resume the data position: it was saved with other loader settings ({pairs}); "
                "resume with the same settings, or start the data from the beginning"
            )
        self.epoch, self.step, self._order = int(state["epoch"]), int(state["step"]), None


def main(argv: list[str] | None = None) -> None:
    """Print the shapes and first row of the first batch of a shard directory."""
    args = argv if argv is not None else sys.argv[1:]
    loader = TokenLoader(args[0] if args else ".", batch_size=2, block_size=16)
    x, y = loader.next_batch()
    print(f"x {x.shape} {x.dtype}, y {y.shape}; x[0] = {x[0].tolist()}, y[0] = {y[0].tolist()}")


if __name__ == "__main__":
    main()
