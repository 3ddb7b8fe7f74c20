"""Pre-tokenization split patterns: how text is cut into chunks before BPE merges run.

BPE never merges across chunk boundaries, so the pattern decides what a token can be: with the
GPT-2 pattern a space sticks to the word after it (" hello"), digits form runs of any length;
the GPT-4 (cl100k) pattern caps digit runs at three, lets one punctuation character lead a word
("_name", ".append") and keeps newlines apart from other whitespace. Both come from OpenAI's
releases (Radford et al. 2019; tiktoken's cl100k_base) and are written for the `regex` module.
Real checkpoints bring their own (Llama 3's, Qwen2's), and GGUF files name theirs the way
llama.cpp does (`LLAMA_CPP_PRE` below).

    >>> split("Hello world, it's 12345!", GPT4_PATTERN)
    ['Hello', ' world', ',', ' it', "'s", ' ', '123', '45', '!']
    >>> split("Hello world, it's 12345!", GPT2_PATTERN)
    ['Hello', ' world', ',', ' it', "'s", ' 12345', '!']
"""

from __future__ import annotations

from functools import lru_cache

import regex

from lmstack.errors import TokenizerError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# cl100k_base writes some quantifiers possessive (`?+`, `++`); here that cannot change a match
# (the characters given back could never start the next part), and without them tiktoken's
# fancy-regex splits ~10% faster (docs/benchmarks.md).

# Llama 3's (tiktoken's cl100k with `\p{N}{1,3}` and `\s*[\r\n]+`) and Qwen2's (the same with
# single digits), as their tokenizer.json files write them for Hugging Face `tokenizers`.
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
DIGIT_PATTERN = r"\p{N}"  # each digit its own piece (HF `Digits(individual_digits=True)`)

# Names accepted wherever a pattern is asked for (CLI `--pattern gpt2`).
PATTERNS: dict[str, str] = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN,
                            "llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}

# Patterns with a match starting at every character (each ends in `\s+`, and every other
# character is a letter, a number or neither): for them `findall` yields exactly the pieces of
# an isolated split, matches and the text between them alike, so the quick way may be taken.
COVERING_PATTERNS = frozenset(PATTERNS.values())

# llama.cpp's pre-tokenizer names (GGUF `tokenizer.ggml.pre`) and the regexes each stands for,
# applied in order, each cutting every piece into its matches and the text between them (HF's
# `Split(..., behavior="isolated")`), as src/llama-vocab.cpp defines them. llama.cpp rewrites
# some for its own regex engine (`(?i:'s)` as `'[sS]`); these are the originals it notes, which
# the models' tokenizer.json files use. Names not listed are refused (gguf_vocab.py).
_GPT2_NAMES = ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
               "mpt", "olmo", "jais")
_LLAMA3_NAMES = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                 "midm-2.0", "lfm2", "dbrx", "smaug-bpe")
_QWEN2_NAMES = ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2")
# StarCoder's family: every digit alone first, then GPT-2's regex.
_STARCODER_NAMES = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                    "minerva")
LLAMA_CPP_PRE: dict[str, tuple[str, ...]] = {
    **{name: (GPT2_PATTERN,) for name in _GPT2_NAMES},
    **{name: (LLAMA3_PATTERN,) for name in _LLAMA3_NAMES},
    **{name: (QWEN2_PATTERN,) for name in _QWEN2_NAMES},
    **{name: (DIGIT_PATTERN, GPT2_PATTERN) for name in _STARCODER_NAMES},
}


def resolve_pattern(name_or_regex: str) -> str:
    """Return the regex for a pattern name ("gpt4", "gpt2") or check and return a raw regex.

    >>> resolve_pattern("gpt2") == GPT2_PATTERN
    True
    >>> resolve_pattern(r"\\w+|\\s+")
    '\\\\w+|\\\\s+'
    >>> resolve_pattern("gpt5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lmstack.errors.TokenizerError: unknown split pattern name 'gpt5'; the known names are...
    """
    if name_or_regex not in PATTERNS and _NAME_LIKE.fullmatch(name_or_regex):
        # Letters, digits, '_' and '-' alone match only that literal text: a mistyped name.
        raise TokenizerError(
            f"unknown split pattern name {name_or_regex!r}; the known names are "
            f"{', '.join(sorted(PATTERNS))} (or pass a regex such as '\\S+|\\s+')"
        )
    pattern = PATTERNS.get(name_or_regex, name_or_regex)
    compile_pattern(pattern)
    return pattern


_NAME_LIKE = regex.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@lru_cache(maxsize=16)
def compile_pattern(pattern: str) -> regex.Pattern:
    """Compile a split pattern once; a bad pattern is a TokenizerError naming the fix."""
    try:
        return regex.compile(pattern)
    except regex.error as e:
        raise TokenizerError(
            f"invalid split pattern {pattern!r}: {e}; pass a name ({', '.join(PATTERNS)}) or a "
            "valid regex"
        ) from None


def split(text: str, pattern: str = GPT4_PATTERN) -> list[str]:
    """Cut text into pre-tokenization chunks; the chunks concatenate back to the text.

    >>> "".join(split("a  b\\n\\n  c")) == "a  b\\n\\n  c"
    True
    """
    return compile_pattern(pattern).findall(text)
