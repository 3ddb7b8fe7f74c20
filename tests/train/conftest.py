"""Fixtures for the training tests: one small shard directory per session, and tiny run configs.

The data is real text (a dozen stdlib modules) encoded with a small BPE trained on it, with the
tokenizer saved next to the shards, as `lmstack data prepare` leaves it. Models are tiny (one
layer, width 32) so a few dozen steps take well under a second each on one thread.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import stdlib_sample

# One intra-op thread: on a shared 2-core machine tiny tensors run fastest single-threaded.
torch.set_num_threads(1)

TINY_GPT = ["model.model_type=gpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
            "model.block_size=32"]


def make_shards(root: Path, n_files: int = 12, vocab_size: int = 320) -> Path:
    """A shard directory (train/val .bin + manifest) with tokenizer.json beside the shards."""
    from lmstack.data.shards import ShardConfig, write_shards
    from lmstack.data.sources import Document
    from lmstack.tokenizer import train_bpe

    texts = stdlib_sample(n_files)
    tok = train_bpe(texts, vocab_size=vocab_size, progress=False, workers=1)
    data = root / "data"
    write_shards([Document(t, f"stdlib/{i}") for i, t in enumerate(texts)], tok, data,
                 ShardConfig(val_fraction=0.15, seed=0, workers=1, progress=False))
    tok.save(data / "tokenizer.json")
    return data


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """The session's shard directory."""
    return make_shards(tmp_path_factory.mktemp("train_data"))


def run_overrides(data: Path, out: Path, *extra: str, model: list[str] | None = None) -> list[str]:
    """Overrides for a tiny, quiet, deterministic CPU run; `extra` ones win."""
    return [
        f"data={data}", f"out_dir={out}", *(TINY_GPT if model is None else model),
        "batch_size=4", "block_size=32", "steps=20", "eval_every=0", "eval_batches=2",
        "save_every=1000", "log_every=1", "progress=false", "device=cpu", "threads=1",
        "schedule.lr=3e-3", "schedule.min_lr=3e-4", "schedule.warmup_steps=2", *extra,
    ]


def free_port() -> int:
    """A TCP port nobody listens on right now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]
