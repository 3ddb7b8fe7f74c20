"""The fine-tuning task's splits share no wording and no operand pair, and every reply is the
value its question asks for, whatever the seed."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.data.word_problems import TEST_TEMPLATES, TRAIN_TEMPLATES, word_problems
from lmstack.errors import ConfigError


def pairs(records) -> set[frozenset]:
    return {frozenset(map(int, re.findall(r"\d+", r["messages"][0]["content"]))) for r in records}


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), digits=st.integers(2, 3))
def test_splits_are_disjoint_and_answers_are_right(seed, digits):
    train, test = word_problems(200, "train", seed, digits), word_problems(100, "test", seed, digits)
    assert not pairs(train) & pairs(test)
    assert len({r["messages"][0]["content"] for r in train}) == 200  # distinct questions
    words = {t.text.split("{")[0] for t in TRAIN_TEMPLATES} & {t.text.split("{")[0] for t in TEST_TEMPLATES}
    assert not words  # no template opens like another split's
    for r in train + test:
        question, reply = r["messages"][0]["content"], r["messages"][1]["content"]
        a, b = map(int, re.findall(r"\d+", question)[:2])
        adds = any(w in question for w in ("more", "plus", "found", "in all"))
        assert int(reply) == (a + b if adds else abs(a - b)), question
        assert all(len(str(x)) == digits for x in (a, b))


def test_impossible_requests_are_errors():
    with pytest.raises(ConfigError, match="do not exist"):
        word_problems(10**6, "train", digits=1)
    with pytest.raises(ConfigError, match="split"):
        word_problems(1, "dev")
