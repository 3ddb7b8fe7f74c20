"""Fixtures for the evaluation tests: a small tokenizer and held-out text."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import stdlib_sample

torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared 2-core machine


@pytest.fixture(scope="session")
def eval_tok():
    from lmstack.tokenizer import train_bpe

    return train_bpe(stdlib_sample(4), vocab_size=300, progress=False, workers=1)


@pytest.fixture(scope="session")
def held_out() -> str:
    """About 150 tokens of real text that is not in the tokenizer's training files."""
    return stdlib_sample(30)[-1][:600]
