"""Unicode and line-ending normalization, the first cleaning step.

The same visible text can be spelled with different code points ("é" as one code point or as
"e" + a combining accent). Normalizing first means the tokenizer, the filters and the dedup
hash all see one spelling. The forms are those of Unicode Standard Annex #15:

* ``NFC`` (default) composes characters without changing their meaning: safe for code.
* ``NFKC`` also folds compatibility characters ("ﬁ" -> "fi", full-width digits -> ASCII);
  used by e.g. CCNet (Wenzek et al. 2020). It can change string literals, so it is opt-in.
* ``none`` leaves the text alone.

Line endings are always unified to ``\\n`` so that Windows files do not become near-duplicates
of themselves that differ in every line.

Run it: ``python -m doctest -v lmstack/data/normalize.py``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

from lmstack.errors import ConfigError


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _identity(text: str) -> str:
    return text


# Normalization forms by the name used in configs and on the command line.
NORMALIZERS: dict[str, Callable[[str], str]] = {"NFC": _nfc, "NFKC": _nfkc, "none": _identity}


def normalize_newlines(text: str) -> str:
    """Turn Windows (CRLF) and old Mac (CR) line endings into LF.

    >>> normalize_newlines("a\\r\\nb\\rc\\n")
    'a\\nb\\nc\\n'
    """
    return text.replace("\r\n", "\n").replace("\r", "\n")


def normalize_text(text: str, form: str = "NFC") -> str:
    """Apply the Unicode normalization `form` and unify line endings.

    >>> normalize_text("cafe\\u0301\\r\\n") == "caf\\u00e9\\n"
    True
    >>> normalize_text("\\ufb01le", "NFKC")
    'file'
    >>> normalize_text("\\ufb01le", "NFC") == "\\ufb01le"
    True
    """
    return NORMALIZERS[check_form(form)](normalize_newlines(text))


def check_form(form: str) -> str:
    """Return `form` if it names a normalizer, else raise ConfigError listing the choices.

    >>> check_form("NFKC")
    'NFKC'
    >>> check_form("nfd")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: unknown normalization 'nfd'; choose one of ['NFC', 'NFKC', 'none']
    """
    if form not in NORMALIZERS:
        raise ConfigError(f"unknown normalization {form!r}; choose one of {list(NORMALIZERS)}")
    return form
