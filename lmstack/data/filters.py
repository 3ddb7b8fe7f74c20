"""Heuristic document-quality filters in the style of Gopher's MassiveText rules.

Each rule is a pure *metric* (text -> number) plus a bound held in ``FilterConfig``; a
document is dropped by the first rule whose bound it breaks, and that rule's name is what the
prepare report counts. The rules and their thresholds follow Rae et al. 2021, "Scaling
Language Models: Methods, Analysis & Insights from Training Gopher", appendix A.1.1 (quality
filter and repetition removal), plus two code rules from the StarCoder/The Stack pipeline
(Li et al. 2023, "StarCoder: may the source be with you!"): maximum line length and
alphanumeric fraction.

The defaults are NOT Gopher's. lmstack's default corpus is Python source code, on which the
prose rules misfire (a module is full of ``#`` comments, ``=`` and ``)`` "words" and repeated
``return None`` lines). The defaults therefore only drop what is junk in code *and* prose
(empty files, machine-generated walls of one character, minified/encoded blobs, files that are
mostly one repeated line) and keep ~99.9% of the stdlib corpus; ``FilterConfig.gopher()``
gives the paper's thresholds for web prose. A bound of ``None`` disables its rule.

Run it: ``python -m lmstack.data.filters FILE`` prints every metric and the verdict.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

# Gopher's stop-word rule: real English prose contains at least two of these.
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_BULLETS = ("-", "*", "\u2022", "\u2023", "\u25e6", "\u2043")
# ASCII lookup tables for the numpy fast paths; str.split() also splits on \x1c-\x1f.
_ASCII_ALNUM = np.array([chr(i).isalnum() for i in range(128)])
_ASCII_ALPHA = np.array([chr(i).isalpha() for i in range(128)])
_ASCII_SPACE = np.array([chr(i).isspace() for i in range(128)])


def char_count(text: str) -> float:
    """Number of characters.

    >>> char_count("héllo")
    5
    """
    return len(text)


def word_count(text: str) -> float:
    """Number of whitespace-separated words.

    >>> word_count("  def f(x):\\n    return x  ")
    4
    """
    return len(text.split())


def mean_word_length(text: str) -> float:
    """Mean length of whitespace-separated words (0 for no words).

    >>> mean_word_length("ab abcd")
    3.0
    >>> mean_word_length("")
    0.0
    """
    words = text.split()
    return sum(map(len, words)) / len(words) if words else 0.0


def symbol_to_word_ratio(text: str) -> float:
    """The larger of ('#' count / words) and ('...' or '…' count / words); 0 for no words.

    >>> symbol_to_word_ratio("# one two three")
    0.25
    >>> symbol_to_word_ratio("wait... what... ok")
    0.6666666666666666
    """
    words = len(text.split())
    if not words:
        return 0.0
    ellipses = text.count("...") + text.count("\u2026")
    return max(text.count("#"), ellipses) / words


def alpha_word_fraction(text: str) -> float:
    """Fraction of words that contain at least one alphabetic character (1 for no words).

    >>> alpha_word_fraction("x = 1 + y2")
    0.4
    """
    if text.isascii():  # The common case, in numpy: a Python loop per word is slow on 30 MB.
        b = np.frombuffer(text.encode("ascii"), np.uint8)
        in_word = ~_ASCII_SPACE[b]
        is_start = in_word.copy()
        is_start[1:] &= ~in_word[:-1]
        words = int(np.count_nonzero(is_start))
        if not words:
            return 1.0
        # Word number of every letter; letters of one word are adjacent in this sorted list.
        ids = (np.cumsum(is_start) - 1)[_ASCII_ALPHA[b]]
        return (int(np.count_nonzero(np.diff(ids))) + 1 if ids.size else 0) / words
    split = text.split()
    return sum(any(c.isalpha() for c in w) for w in split) / len(split) if split else 1.0


def alphanumeric_fraction(text: str) -> float:
    """Fraction of characters that are letters or digits (1 for empty text).

    >>> alphanumeric_fraction("ab==")
    0.5
    """
    if not text:
        return 1.0
    if text.isascii():  # The common case, counted in C by numpy instead of char by char.
        return int(np.count_nonzero(_ASCII_ALNUM[np.frombuffer(text.encode("ascii"), np.uint8)])) / len(text)
    return sum(c.isalnum() for c in text) / len(text)


def _content_lines(text: str) -> list[str]:
    """Non-blank lines with trailing whitespace dropped (blank lines are layout, not content)."""
    return [line.rstrip() for line in text.split("\n") if line.strip()]


def duplicate_line_fraction(text: str) -> float:
    """Fraction of non-blank lines that repeat an earlier line exactly (0 for no lines).

    >>> duplicate_line_fraction("a\\nb\\na\\n\\na\\n")
    0.5
    """
    lines = _content_lines(text)
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


def duplicate_line_char_fraction(text: str) -> float:
    """Fraction of non-blank-line characters that sit in lines repeating an earlier line.

    >>> duplicate_line_char_fraction("aaa\\nb\\naaa")
    0.42857142857142855
    """
    lines = _content_lines(text)
    total = sum(map(len, lines))
    if not total:
        return 0.0
    seen: set[str] = set()
    dup = 0
    for line in lines:
        if line in seen:
            dup += len(line)
        seen.add(line)
    return dup / total


def top_ngram_char_fraction(text: str, n: int = 2) -> float:
    """Fraction of word characters covered by the most frequent word n-gram (Gopher's rule).

    >>> top_ngram_char_fraction("a b a b a b", 2)
    1.0
    >>> top_ngram_char_fraction("one two three four", 2)
    0.0
    """
    words = text.split()
    total = sum(map(len, words))
    if len(words) < n or not total:
        return 0.0
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    # A gram seen once is not repetition; Gopher counts only repeated n-grams.
    if count < 2:
        return 0.0
    return min(1.0, count * sum(map(len, gram)) / total)


def max_line_length(text: str) -> float:
    """Length of the longest line.

    >>> max_line_length("ab\\nabcd\\n")
    4
    """
    return max(map(len, text.split("\n")), default=0)


def bullet_line_fraction(text: str) -> float:
    """Fraction of non-blank lines that start with a bullet point (0 for no lines).

    >>> bullet_line_fraction("- a\\n* b\\nc")
    0.6666666666666666
    """
    lines = _content_lines(text)
    return sum(line.lstrip().startswith(_BULLETS) for line in lines) / len(lines) if lines else 0.0


def ellipsis_line_fraction(text: str) -> float:
    """Fraction of non-blank lines that end with an ellipsis (0 for no lines).

    >>> ellipsis_line_fraction("and so on...\\nfin")
    0.5
    """
    lines = _content_lines(text)
    return sum(line.endswith(("...", "\u2026")) for line in lines) / len(lines) if lines else 0.0


def stop_word_count(text: str) -> float:
    """How many distinct Gopher stop words the text uses (case-insensitive).

    >>> stop_word_count("The cat and THE hat")
    2
    """
    return len(GOPHER_STOP_WORDS & {w.lower() for w in text.split()})


@dataclass
class FilterConfig:
    """Bounds for each rule; the field name is the rule name, ``None`` turns the rule off."""

    min_chars: int | None = 1
    max_chars: int | None = 2_000_000
    min_words: int | None = 1
    max_words: int | None = 200_000
    min_mean_word_length: float | None = 2.0
    max_mean_word_length: float | None = 40.0
    max_symbol_word_ratio: float | None = 1.0
    min_alpha_word_fraction: float | None = 0.2
    min_alphanumeric_fraction: float | None = 0.2
    max_line_length: int | None = 5000
    max_duplicate_line_fraction: float | None = 0.7
    max_duplicate_line_char_fraction: float | None = 0.7
    max_top_2gram_char_fraction: float | None = None
    max_bullet_line_fraction: float | None = 0.9
    max_ellipsis_line_fraction: float | None = 0.5
    min_stop_words: int | None = None

    @classmethod
    def gopher(cls) -> FilterConfig:
        """The thresholds of Rae et al. 2021 for English web prose (too strict for code)."""
        return cls(
            min_chars=None,
            max_chars=None,
            min_words=50,
            max_words=100_000,
            min_mean_word_length=3.0,
            max_mean_word_length=10.0,
            max_symbol_word_ratio=0.1,
            min_alpha_word_fraction=0.8,
            min_alphanumeric_fraction=None,
            max_line_length=None,
            max_duplicate_line_fraction=0.3,
            max_duplicate_line_char_fraction=0.2,
            max_top_2gram_char_fraction=0.2,
            max_bullet_line_fraction=0.9,
            max_ellipsis_line_fraction=0.3,
            min_stop_words=2,
        )

    @classmethod
    def off(cls) -> FilterConfig:
        """A config with every rule disabled."""
        return cls(**{f.name: None for f in fields(cls)})


# Rule name (= FilterConfig field) -> the metric it bounds. The "min_"/"max_" prefix says
# which side the bound is on. Cheap length rules come first so junk is rejected early.
RULES: dict[str, Callable[[str], float]] = {
    "min_chars": char_count,
    "max_chars": char_count,
    "max_line_length": max_line_length,
    "min_words": word_count,
    "max_words": word_count,
    "min_mean_word_length": mean_word_length,
    "max_mean_word_length": mean_word_length,
    "max_symbol_word_ratio": symbol_to_word_ratio,
    "min_alpha_word_fraction": alpha_word_fraction,
    "min_alphanumeric_fraction": alphanumeric_fraction,
    "max_duplicate_line_fraction": duplicate_line_fraction,
    "max_duplicate_line_char_fraction": duplicate_line_char_fraction,
    "max_top_2gram_char_fraction": top_ngram_char_fraction,
    "max_bullet_line_fraction": bullet_line_fraction,
    "max_ellipsis_line_fraction": ellipsis_line_fraction,
    "min_stop_words": stop_word_count,
}


def passes(value: float, rule: str, bound: float) -> bool:
    """Whether `value` is within `bound` for a rule named min_* (>=) or max_* (<=).

    >>> passes(3, "min_words", 3), passes(2, "min_words", 3), passes(2, "max_words", 3)
    (True, False, True)
    """
    return value >= bound if rule.startswith("min_") else value <= bound


def failed_rule(text: str, cfg: FilterConfig) -> str | None:
    """Name of the first rule `text` breaks under `cfg`, or None if it is kept.

    >>> failed_rule("", FilterConfig())
    'min_chars'
    >>> failed_rule("def f(x):\\n    return x + 1\\n", FilterConfig()) is None
    True
    >>> failed_rule("def f(x):\\n    return x + 1\\n", FilterConfig.gopher())
    'min_words'
    """
    for rule, metric in RULES.items():
        bound = getattr(cfg, rule)
        if bound is not None and not passes(metric(text), rule, bound):
            return rule
    return None


def main(argv: list[str] | None = None) -> None:
    """Print each metric of the given files and whether the default config keeps them."""
    cfg = FilterConfig()
    for path in argv if argv is not None else sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        print(path)
        for rule, metric in RULES.items():
            print(f"  {rule:34s} {metric(text):>12.4g}   bound {getattr(cfg, rule)}")
        print(f"  -> {'dropped by ' + str(failed_rule(text, cfg)) if failed_rule(text, cfg) else 'kept'}")


if __name__ == "__main__":
    main()
