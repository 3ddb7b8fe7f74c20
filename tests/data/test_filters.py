"""Quality filters: metrics match their plain definitions, rules respect their bounds."""

from __future__ import annotations

from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmstack.data import filters as F
from lmstack.data.filters import RULES, FilterConfig, failed_rule, passes

texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)
ascii_texts = st.text(alphabet=st.characters(codec="ascii"), max_size=300)


@given(st.one_of(texts, ascii_texts))
def test_fast_metrics_equal_naive_definitions(text):
    words = text.split()
    naive_alpha = sum(any(c.isalpha() for c in w) for w in words) / len(words) if words else 1.0
    naive_alnum = sum(c.isalnum() for c in text) / len(text) if text else 1.0
    assert F.alpha_word_fraction(text) == pytest.approx(naive_alpha)
    assert F.alphanumeric_fraction(text) == pytest.approx(naive_alnum)


@given(texts)
def test_fractions_are_fractions(text):
    for metric in (
        F.alpha_word_fraction, F.alphanumeric_fraction, F.duplicate_line_fraction,
        F.duplicate_line_char_fraction, F.top_ngram_char_fraction, F.bullet_line_fraction,
        F.ellipsis_line_fraction,
    ):
        assert 0.0 <= metric(text) <= 1.0, metric.__name__


@given(st.lists(st.text(alphabet="abc xyz", min_size=1, max_size=8), min_size=1, max_size=20, unique=True))
def test_distinct_lines_have_no_duplicates_and_repeating_all_gives_half(lines):
    lines = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not lines:
        return
    text = "\n".join(lines)
    assert F.duplicate_line_fraction(text) == 0.0
    # The text twice over: every line of the second copy repeats one of the first.
    assert F.duplicate_line_fraction(text + "\n" + text) == pytest.approx(0.5)
    assert F.duplicate_line_char_fraction(text + "\n" + text) == pytest.approx(0.5)


@given(texts)
def test_all_rules_off_keeps_everything(text):
    assert failed_rule(text, FilterConfig.off()) is None


@given(texts, st.sampled_from(list(RULES)))
def test_a_rejection_names_a_rule_whose_bound_is_broken(text, rule):
    cfg = FilterConfig.off()
    # Bound the rule at the metric of a fixed reference text, then check the verdict agrees.
    bound = RULES[rule]("def f(x):\n    return x  # the end...\n- item")
    setattr(cfg, rule, bound)
    value = RULES[rule](text)
    verdict = failed_rule(text, cfg)
    if rule.startswith("min_"):
        assert (verdict == rule) == (value < bound)
    else:
        assert (verdict == rule) == (value > bound)


def test_every_rule_is_a_config_field_and_back():
    assert set(RULES) == {f.name for f in fields(FilterConfig)}
    assert all(r.startswith(("min_", "max_")) for r in RULES)


def test_passes_direction():
    assert passes(5, "min_x", 5) and not passes(4, "min_x", 5)
    assert passes(5, "max_x", 5) and not passes(6, "max_x", 5)


CODE = '''"""Utilities."""

import os


def walk(root):
    # Yield every file under root.
    for dirpath, _, names in os.walk(root):
        for name in names:
            yield os.path.join(dirpath, name)
'''

PROSE = (
    "The history of the city is long and that is why it has so many old buildings with "
    "towers. Many visitors come to see them and to walk along the river, which runs through "
    "the center of the town and has been the heart of its trade for centuries. " * 2
)


def test_defaults_keep_code_and_prose_and_drop_junk():
    cfg = FilterConfig()
    assert failed_rule(CODE, cfg) is None
    assert failed_rule(PROSE, cfg) is None
    assert failed_rule("", cfg) == "min_chars"
    assert failed_rule("= " * 50, cfg) == "min_mean_word_length"
    assert failed_rule("=" * 50, cfg) == "max_mean_word_length"
    assert failed_rule("x" * 6000, cfg) == "max_line_length"
    assert failed_rule("same line\n" * 50 + "other\n", cfg) == "max_duplicate_line_fraction"


def test_gopher_config_keeps_prose_but_not_code():
    cfg = FilterConfig.gopher()
    assert failed_rule(PROSE, cfg) is None
    assert failed_rule(CODE, cfg) is not None
