"""Special tokens and the policy for text that spells one.

Special tokens (`<|endoftext|>` between documents, `<|im_start|>`/`<|im_end|>` around chat
turns) are ids that ordinary text must not be able to produce: a user who types
"<|endoftext|>" into a chat box must not end the model's document. So, as in tiktoken, encoding
text that contains a special token's string raises an error unless the caller allows that token
(`allowed_special`), and `encode_ordinary` treats such strings as plain text.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import lru_cache

import regex

from lmstack.errors import SpecialTokenError

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)


@lru_cache(maxsize=32)
def _specials_regex(specials: tuple[str, ...]) -> regex.Pattern:
    # Longest first, so a special that is a prefix of another never shadows it.
    alternatives = sorted(specials, key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(s) for s in alternatives) + ")")


def split_on_specials(text: str, specials: Collection[str]) -> list[str]:
    """Split text around occurrences of the given special strings, keeping them.

    >>> split_on_specials("a<|endoftext|>b", {"<|endoftext|>"})
    ['a', '<|endoftext|>', 'b']
    >>> split_on_specials("plain", set())
    ['plain']
    """
    if not specials:
        return [text]
    return [p for p in _specials_regex(tuple(sorted(specials))).split(text) if p]


def special_splitter(specials: tuple[str, ...]) -> Callable[[str], list[str]]:
    """Return a function that cuts text into the pieces between special strings (dropped).

    >>> special_splitter(("<|endoftext|>",))("a<|endoftext|>b")
    ['a', 'b']
    """
    specials_set = set(specials)
    return lambda text: [p for p in split_on_specials(text, specials) if p not in specials_set]


def check_special(
    text: str,
    special_tokens: Collection[str],
    allowed_special: Collection[str] | str = (),
    disallowed_special: Collection[str] | str = "all",
) -> set[str]:
    """Return the set of specials to honour; raise if text spells a disallowed one.

    >>> check_special("hi <|endoftext|>", {"<|endoftext|>"}, allowed_special="all")
    {'<|endoftext|>'}
    >>> check_special("hi <|endoftext|>", {"<|endoftext|>"})
    Traceback (most recent call last):
    ...
    lmstack.errors.SpecialTokenError: text contains the special token '<|endoftext|>' ...
    """
    allowed = set(special_tokens) if allowed_special == "all" else set(allowed_special)
    unknown = allowed - set(special_tokens)
    if unknown:
        raise SpecialTokenError(
            f"allowed_special names {sorted(unknown)}, which this tokenizer does not have; "
            f"its special tokens are {sorted(special_tokens)}"
        )
    if disallowed_special == "all":
        disallowed = set(special_tokens) - allowed
    else:
        disallowed = set(disallowed_special)
    if disallowed:
        match = _specials_regex(tuple(sorted(disallowed))).search(text)
        if match:
            err = SpecialTokenError(
                f"text contains the special token {match.group()!r} at offset {match.start()}, "
                f"which is not allowed here; pass allowed_special={{{match.group()!r}}} (or "
                f"'all') to encode it as the special token, or disallowed_special=() / "
                f"encode_ordinary to encode it as plain text"
            )
            err.token, err.offset = match.group(), match.start()  # a CLI says it in its own flags
            raise err
    return allowed
