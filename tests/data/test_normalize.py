"""Unicode normalization: idempotent, produces the requested form, unifies line endings."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmstack.data.normalize import NORMALIZERS, normalize_text
from lmstack.errors import ConfigError

FORMS = list(NORMALIZERS)


@given(st.text(), st.sampled_from(FORMS))
def test_idempotent(text, form):
    once = normalize_text(text, form)
    assert normalize_text(once, form) == once


@given(st.text())
def test_no_carriage_returns_and_line_count_kept(text):
    out = normalize_text(text, "none")
    assert "\r" not in out
    # Every CRLF, lone CR and LF is exactly one line break afterwards.
    assert out.count("\n") == text.count("\n") + text.count("\r") - text.count("\r\n")


@given(st.text(), st.sampled_from(["NFC", "NFKC"]))
def test_output_is_in_the_requested_form(text, form):
    assert unicodedata.is_normalized(form, normalize_text(text, form))


@given(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r")))
def test_ascii_without_cr_is_untouched(text):
    assert all(normalize_text(text, form) == text for form in FORMS)


def test_unknown_form():
    with pytest.raises(ConfigError, match="choose one of"):
        normalize_text("x", "NFD")
