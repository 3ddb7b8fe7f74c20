"""Fixtures for the data tests: a tiny tokenizer and small corpora written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\nSed do eiusmod tempor.\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)\n",
    "import os\nfor name in os.listdir('.'):\n    print(name.upper())\n",
]


@pytest.fixture(scope="session")
def small_tok():
    """A byte-level BPE with a few merges: enough to encode anything, fast to train."""
    from lmstack.tokenizer import train_bpe

    return train_bpe(TEXTS * 4, vocab_size=300, progress=False, workers=1)


@pytest.fixture(scope="session")
def other_tok():
    """A second tokenizer with a different fingerprint."""
    from lmstack.tokenizer import train_bpe

    return train_bpe(["zzz yyy xxx www " * 20], vocab_size=270, progress=False, workers=1)


@pytest.fixture
def tok_path(small_tok, tmp_path) -> Path:
    return small_tok.save(tmp_path / "tok.json")


@pytest.fixture
def make_corpus(tmp_path):
    """A function writing {relative path: text or bytes} under tmp_path/corpus; returns that dir."""

    def write(files: dict[str, str | bytes]) -> Path:
        root = tmp_path / "corpus"
        root.mkdir(exist_ok=True)
        for rel, content in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content, encoding="utf-8")
        return root

    return write
