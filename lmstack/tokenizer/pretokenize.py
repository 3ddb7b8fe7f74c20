"""From text to the pieces BPE merges within: Unicode normalization, then split steps in order.

A Hugging Face `tokenizer.json` spells this as a `normalizer` and a `pre_tokenizer`; a GGUF
file as a pre-tokenizer name standing for a list of regexes (patterns.py). Both become a
`Pretokenizer`: normalization forms (NFC for Qwen2), then steps, each applied to every piece
the steps before it made:

- `Split(regex, behavior, invert)`: cut a piece at the matches of `regex`. With "isolated"
  the matches and the text between them all become pieces; with "removed" the matches are
  dropped. `invert` swaps the roles of the matches and the text between them, so
  `Split(r, "removed", invert=True)` keeps only the matches: `findall`, the rule of tiktoken
  and of the tokenizers lmstack trains.
- `PrefixSpace()`: a piece that does not start with a space gets one (HF `ByteLevel` with
  `add_prefix_space`, which adds it to every piece it is handed, not only the first).

    >>> Pretokenizer(steps=(Split(r"\\p{N}"), Split(r"\\s+|\\S+"))).pieces("ab12 c")
    ['ab', '1', '2', ' ', 'c']
    >>> Pretokenizer.from_pattern(r"\\p{L}+").pieces("ab, cd")   # findall: the rest is dropped
    ['ab', 'cd']
    >>> Pretokenizer(("NFC",), (PrefixSpace(), Split(r" ?\\w+|\\W"))).pieces("e\\u0301t")
    [' ét']
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from lmstack.errors import TokenizerError
from lmstack.tokenizer.patterns import COVERING_PATTERNS, compile_pattern

NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")
BEHAVIORS = ("isolated", "removed")


@dataclass(frozen=True)
class Split:
    """Cut each piece at the matches of a regex (see the module docstring)."""

    regex: str
    behavior: str = "isolated"
    invert: bool = False

    def __post_init__(self) -> None:
        if self.behavior not in BEHAVIORS:
            raise TokenizerError(f"split behavior {self.behavior!r} is not one of {BEHAVIORS}")
        compile_pattern(self.regex)

    def apply(self, piece: str) -> list[str]:
        """The pieces one piece becomes."""
        rx = compile_pattern(self.regex)
        if self.behavior == "removed" and self.invert or \
                self.behavior == "isolated" and self.regex in COVERING_PATTERNS:
            if not rx.groups:  # findall returns the matches themselves: the quick way
                return [m for m in rx.findall(piece) if m]
            return [m.group() for m in rx.finditer(piece) if m.end() > m.start()]
        out, pos = [], 0
        keep_gaps = self.behavior == "isolated" or not self.invert  # "removed" drops matches
        keep_matches = self.behavior == "isolated"  # (removed + invert returned above)
        for m in rx.finditer(piece):  # an empty match still cuts there, as in `tokenizers`
            start, end = m.span()
            if start > pos and keep_gaps:
                out.append(piece[pos:start])
            if end > start and keep_matches:
                out.append(piece[start:end])
            pos = end
        if pos < len(piece) and keep_gaps:
            out.append(piece[pos:])
        return out


@dataclass(frozen=True)
class PrefixSpace:
    """Give every piece that does not start with a space one (HF `add_prefix_space`)."""

    def apply(self, piece: str) -> list[str]:
        """The piece, with a leading space."""
        return [piece if piece.startswith(" ") else " " + piece]


Step = Split | PrefixSpace


@dataclass(frozen=True)
class Pretokenizer:
    """Normalization forms, then split steps: text -> the pieces BPE encodes one by one."""

    normalizers: tuple[str, ...] = ()
    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        for form in self.normalizers:
            if form not in NORMALIZERS:
                raise TokenizerError(f"normalizer {form!r} is not one of {NORMALIZERS}")

    @classmethod
    def from_pattern(cls, pattern: str) -> Pretokenizer:
        """One regex whose matches are the pieces (findall): our trained tokenizers' rule."""
        return cls((), (Split(pattern, "removed", invert=True),))

    @property
    def is_findall(self) -> bool:
        """Whether this is the one-regex findall form (`from_pattern`), as tiktoken splits."""
        return (not self.normalizers and len(self.steps) == 1
                and self.steps[0] == Split(self.steps[0].regex, "removed", True))

    def normalize(self, text: str) -> str:
        """Apply the normalization forms in order."""
        for form in self.normalizers:
            if not unicodedata.is_normalized(form, text):
                text = unicodedata.normalize(form, text)
        return text

    def pieces(self, text: str) -> list[str]:
        """Normalize, then run every step over every piece."""
        return self.split(self.normalize(text))

    def split(self, text: str, steps: tuple[Step, ...] | None = None) -> list[str]:
        """Run the steps (all, or those given) over already-normalized text."""
        pieces = [text] if text else []
        for step in self.steps if steps is None else steps:
            pieces = [out for piece in pieces for out in step.apply(piece)]
        return pieces

    def to_dict(self) -> dict:
        """The JSON form our tokenizer files keep."""
        steps = [{"type": "prefix_space"} if isinstance(s, PrefixSpace) else
                 {"type": "split", "regex": s.regex, "behavior": s.behavior, "invert": s.invert}
                 for s in self.steps]
        return {"normalizers": list(self.normalizers), "steps": steps}

    @classmethod
    def from_dict(cls, d: dict) -> Pretokenizer:
        """Read `to_dict`'s form back."""
        steps: list[Step] = []
        for s in d.get("steps", []):
            if s.get("type") == "prefix_space":
                steps.append(PrefixSpace())
            elif s.get("type") == "split":
                steps.append(Split(s["regex"], s.get("behavior", "isolated"),
                                   bool(s.get("invert", False))))
            else:
                raise TokenizerError(f"unknown pre-tokenizer step {s!r}; the file is corrupt")
        return cls(tuple(d.get("normalizers", ())), tuple(steps))
