"""BERT's basic tokenizer: the text clean-up and splitting that runs before WordPiece.

Devlin et al. 2019 (BERT) cut text into words before WordPiece (wordpiece.py) sees it. The
steps, in the order Hugging Face `tokenizers` runs them (its `BertNormalizer`, then its
`BertPreTokenizer`), which is the order this module follows:

1. clean: drop NUL, U+FFFD and control/format/private-use characters (Cc, Cf, Co; tab, newline
   and carriage return stay), and turn every whitespace character into a space;
2. CJK: put spaces around each CJK ideograph, so each one is a word of its own (the Chinese
   vocabulary is one token per character);
3. strip accents: NFD, then drop the nonspacing marks (Mn): "café" -> "cafe";
4. lowercase, character by character (no final-sigma rule: "ΟΔΟΣ" -> "οδοσ");
5. split on whitespace (dropped), then cut every punctuation character out as a word: Unicode
   P* and the ASCII symbols BERT counts as punctuation ($ + < = > ^ ` | ~).

Accents are stripped by default exactly when text is lowercased (`strip_accents=None`), as in
BERT's uncased models; `strip_accents=False` keeps them under lowercasing.

    >>> BertNormalizer(lowercase=True).normalize("Héllo\\tWORLD\\x00中文")
    'hello world 中  文 '
    >>> pre_tokenize("hello, world!  it's")
    ['hello', ',', 'world', '!', 'it', "'", 's']

Character classes come from Python's `unicodedata` (docs/tokenizer.md, "WordPiece", lists the
few characters where `tokenizers`' older Unicode tables disagree).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

# Unicode's White_Space property (PropList.txt), the set `tokenizers` splits on. Python's
# str.isspace() adds U+001C..U+001F; BERT's original code omits U+2028/U+2029.
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
# Removed by clean-up although they are not in a control category.
REMOVED = frozenset("\x00\ufffd")
CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs"})

# The CJK Unified Ideographs blocks and their extensions, as `tokenizers` lists them (BERT's
# original code starts the fifth range at 0x2B820; `tokenizers` at 0x2B920, and we match it).
CJK_RANGES = (
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0x2F800, 0x2FA1F),
)
# ASCII symbols that are not Unicode punctuation but that BERT splits off all the same.
ASCII_PUNCTUATION = frozenset(
    chr(c) for lo, hi in ((33, 47), (58, 64), (91, 96), (123, 126)) for c in range(lo, hi + 1)
)

MAX_REMEMBERED = 1 << 16  # code points a CharRule remembers before it starts over


def is_whitespace(ch: str) -> bool:
    """Whether a character is whitespace (Unicode White_Space).

    >>> is_whitespace("\\u3000"), is_whitespace("\\u200b"), is_whitespace("a")
    (True, False, False)
    """
    return ch in WHITESPACE


def is_control(ch: str) -> bool:
    """Whether clean-up drops this character (tab, newline and CR are whitespace instead).

    >>> is_control("\\x07"), is_control("\\u200d"), is_control("\\n"), is_control("a")
    (True, True, False, False)
    """
    if ch in "\t\n\r":
        return False
    return ch in REMOVED or unicodedata.category(ch) in CONTROL_CATEGORIES


def is_cjk(ch: str) -> bool:
    """Whether a character is a CJK ideograph (kana and hangul are not).

    >>> is_cjk("中"), is_cjk("カ"), is_cjk("한")
    (True, False, False)
    """
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def is_punctuation(ch: str) -> bool:
    """Whether BERT splits this character off as a word of its own.

    >>> [c for c in "a,$¿«b-~é" if is_punctuation(c)]
    [',', '$', '¿', '«', '-', '~']
    """
    return ch in ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


class CharRule(dict):
    """A per-character rule as a `str.translate` table: each code point's replacement is
    worked out the first time it is seen, then remembered (text repeats its characters).

    >>> CharRule(lambda ch: ch.upper() * 2)("ab")
    'AABB'
    """

    def __init__(self, rule: Callable[[str], str]) -> None:
        super().__init__()
        self.rule = rule

    def __missing__(self, cp: int) -> str:
        if len(self) >= MAX_REMEMBERED:
            self.clear()
        out = self[cp] = self.rule(chr(cp))
        return out

    def __call__(self, text: str) -> str:
        return text.translate(self)


# Each step of the module docstring is one rule applied to every character.
_CLEAN = CharRule(lambda ch: "" if is_control(ch) else " " if ch in WHITESPACE else ch)
_SPACE_CJK = CharRule(lambda ch: f" {ch} " if is_cjk(ch) else ch)
_DROP_MN = CharRule(lambda ch: "" if unicodedata.category(ch) == "Mn" else ch)
_LOWER = CharRule(str.lower)
_SPLIT = CharRule(lambda ch: " " if ch in WHITESPACE else f" {ch} " if is_punctuation(ch) else ch)


def clean_text(text: str) -> str:
    """Drop control characters and turn each whitespace character into a space.

    >>> clean_text("a\\x00b\\u200bc\\td\\u3000e")
    'abc d e'
    """
    return _CLEAN(text)


def space_cjk(text: str) -> str:
    """Put a space on either side of each CJK ideograph.

    >>> space_cjk("ab中文c")
    'ab 中  文 c'
    """
    return _SPACE_CJK(text)


def strip_accents(text: str) -> str:
    """Decompose (NFD) and drop the nonspacing marks.

    >>> strip_accents("café naïve Ångström")
    'cafe naive Angstrom'
    """
    return _DROP_MN(unicodedata.normalize("NFD", text))


def lowercase(text: str) -> str:
    """Lowercase one character at a time (Python's str.lower() would apply final sigma).

    >>> lowercase("ΟΔΟΣ İ")
    'οδοσ i̇'
    """
    return _LOWER(text)


def pre_tokenize(text: str) -> list[str]:
    """BERT's pre-tokenizer: split at whitespace (dropped), each punctuation character apart.

    >>> pre_tokenize("don't...  stop\\u2028now")
    ['don', "'", 't', '.', '.', '.', 'stop', 'now']
    """
    # Whitespace becomes a space and punctuation gets a space either side; then the text
    # splits at spaces (not str.split(), whose whitespace is not Unicode's White_Space).
    return [word for word in _SPLIT(text).split(" ") if word]


@dataclass(frozen=True)
class BertNormalizer:
    """BERT's text normalization (steps 1-4 of the module docstring); `tokenizers`' field names.

    `strip_accents=None` strips accents exactly when `lowercase` is on.
    """

    clean_text: bool = True
    handle_chinese_chars: bool = True
    strip_accents: bool | None = None
    lowercase: bool = True

    def normalize(self, text: str) -> str:
        """The text the pre-tokenizer splits."""
        if self.clean_text:
            text = clean_text(text)
        if self.handle_chinese_chars:
            text = space_cjk(text)
        if self.lowercase if self.strip_accents is None else self.strip_accents:
            text = strip_accents(text)
        if self.lowercase:
            text = lowercase(text)
        return text
