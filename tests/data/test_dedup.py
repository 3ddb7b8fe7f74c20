"""Exact and MinHash/LSH dedup: invariants of hashing, signatures, estimates and the detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.data.dedup import (
    MERSENNE_31, DedupConfig, ExactDeduper, LSHIndex, MinHasher, NearDeduper, candidate_probability,
    estimate_jaccard, exact_key, jaccard, shingle_hashes, word_hashes,
)
from lmstack.errors import ConfigError

words = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
docs = st.lists(words, min_size=0, max_size=60).map(" ".join)
hash_sets = st.sets(st.integers(0, MERSENNE_31 - 1), min_size=1, max_size=200)


@given(docs, st.integers(1, 8))
def test_identical_documents_always_collide(text, k):
    mh = MinHasher(num_perm=32, seed=3)
    a, b = mh.signature(shingle_hashes(text, k)), mh.signature(shingle_hashes(text, k))
    assert np.array_equal(a, b)
    index = LSHIndex(bands=8, rows=4)
    index.insert(0, a)
    assert index.candidates(b) == {0}


@given(hash_sets, hash_sets)
def test_signature_of_union_is_min_of_signatures(a, b):
    mh = MinHasher(num_perm=16, seed=1)
    sig = lambda s: mh.signature(np.array(sorted(s), dtype=np.uint64))  # noqa: E731
    assert np.array_equal(sig(a | b), np.minimum(sig(a), sig(b)))


@given(hash_sets, hash_sets, st.integers(0, 2**31))
@settings(derandomize=True, max_examples=60, deadline=None)
def test_estimate_close_to_true_jaccard(a, b, seed):
    # With 512 permutations the estimate's standard deviation is at most 0.5/sqrt(512) = 0.022;
    # 0.12 is over 5 standard deviations.
    mh = MinHasher(num_perm=512, seed=seed)
    sa = mh.signature(np.array(sorted(a), dtype=np.uint64))
    sb = mh.signature(np.array(sorted(b), dtype=np.uint64))
    assert abs(estimate_jaccard(sa, sb) - jaccard(a, b)) < 0.12


@given(hash_sets, hash_sets)
def test_disjoint_sets_rarely_agree_and_subsets_order(a, b):
    mh = MinHasher(num_perm=64, seed=0)
    sa = mh.signature(np.array(sorted(a), dtype=np.uint64))
    sab = mh.signature(np.array(sorted(a | b), dtype=np.uint64))
    assert np.all(sab <= sa)  # More elements can only lower each minimum.
    assert np.all(sa < MERSENNE_31)


@given(docs)
def test_shingles_are_sorted_unique_and_below_p(text):
    h = shingle_hashes(text, 3)
    assert np.all(np.diff(h.astype(np.int64)) > 0)
    assert np.all(h < MERSENNE_31)
    n_words = len(text.split())
    assert len(h) <= max(n_words - 2, 1 if n_words else 0)


@given(docs)
def test_word_hashes_case_and_punctuation_insensitive(text):
    noisy = " , ".join(w.upper() for w in text.split())
    assert np.array_equal(word_hashes(text), word_hashes(noisy))
    assert len(word_hashes(text)) == len(text.split())


@given(docs, st.sampled_from([" ", "\n", "\t ", "  \n"]))
def test_exact_key_ignores_case_and_spacing(text, sep):
    assert exact_key(text) == exact_key(sep.join(w.upper() for w in text.split()))


@given(st.floats(0, 1), st.floats(0, 1), st.integers(1, 32), st.integers(1, 16))
def test_candidate_probability_is_monotone(s1, s2, bands, rows):
    lo, hi = sorted((s1, s2))
    assert 0.0 <= candidate_probability(lo, bands, rows) <= candidate_probability(hi, bands, rows) <= 1.0


def test_candidate_probability_crosses_half_near_the_mmds_threshold():
    bands, rows = 16, 8
    t = (1 / bands) ** (1 / rows)
    assert candidate_probability(t - 0.1, bands, rows) < 0.5 < candidate_probability(t + 0.1, bands, rows)


def test_exact_deduper_keeps_first_only():
    d = ExactDeduper()
    assert [d.is_duplicate(t) for t in ["a b", "A  B", "c", "a b"]] == [False, True, False, True]


def _doc(i: int, n: int = 300) -> str:
    return " ".join(f"w{(i * 7919 + j * 104729) % 100003}" for j in range(n))


def test_near_deduper_catches_small_edits_but_not_different_documents():
    nd = NearDeduper(DedupConfig(shingle_size=5))
    base = _doc(1).split()
    edited = base[:]
    edited[100] = "changed"  # One edit touches at most 5 of ~296 shingles: Jaccard ~0.97.
    assert not nd.is_duplicate(" ".join(base))
    assert nd.is_duplicate(" ".join(edited))
    assert not any(nd.is_duplicate(_doc(i)) for i in range(2, 30))


def test_threshold_is_respected_for_moderately_similar_documents():
    # "a b" has ~396 shingles, all inside "a b c" (~596): Jaccard ~0.66, between the thresholds.
    a, b, c = _doc(1, 200), _doc(2, 200), _doc(3, 200)
    truth = jaccard(set(shingle_hashes(f"{a} {b}").tolist()), set(shingle_hashes(f"{a} {b} {c}").tolist()))
    assert 0.6 < truth < 0.7
    for threshold, expect in ((0.8, False), (0.5, True)):
        nd = NearDeduper(DedupConfig(threshold=threshold, num_perm=128, bands=32))
        assert not nd.is_duplicate(f"{a} {b}")
        assert nd.is_duplicate(f"{a} {b} {c}") is expect


@pytest.mark.parametrize("kw", [{"num_perm": 100, "bands": 16}, {"bands": 0}, {"threshold": 1.5}, {"shingle_size": 0}])
def test_bad_config(kw):
    with pytest.raises(ConfigError):
        NearDeduper(DedupConfig(**kw))


def test_jaccard_doc_values():
    assert jaccard(set(), set()) == 1.0
    assert math.isclose(jaccard({1}, {1, 2, 3, 4}), 0.25)
