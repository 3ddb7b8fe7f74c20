"""Shared fixtures: small real corpora and a tokenizer trained on them once per session."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def stdlib_sample(n_files: int = 40) -> list[str]:
    """Text of the first n UTF-8 stdlib modules (sorted), a small real code corpus."""
    docs = []
    for path in sorted(STDLIB.glob("*.py")):
        try:
            docs.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
        if len(docs) == n_files:
            break
    return docs


MULTILINGUAL = [
    "Hello, world! Héllo wörld. naïve café",
    "你好，世界。日本語のテキスト、한국어 텍스트",
    "emoji 😀🎉👩‍👩‍👧 flags 🇫🇷🇯🇵",
    "combining e\u0301 a\u0308 o\u0302\u0323 and Zalgo z\u0335\u0327\u0301",
    "CRLF line\r\nnext line\rold mac\n\nblank",
    "NBSP\u00a0here, LS\u2028PS\u2029, tabs\t\tand    spaces   ",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    "Ελληνικά, русский, العربية, עברית, हिन्दी",
]


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return stdlib_sample() + MULTILINGUAL * 3


@pytest.fixture(scope="session")
def tok(corpus):
    from lmstack.tokenizer import train_bpe

    return train_bpe(corpus, vocab_size=1024, progress=False, workers=1)
