"""n-gram LM against a dictionary-of-dictionaries reference written from Chen & Goodman (1998),
normalization over every context, the protocol, files."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError, DataError
from lmstack.models import NGramConfig, NGramLM

from .helpers import cached_logits


class ReferenceNGram:
    """The textbook definition, slow and plain: counts[m][context][token]."""

    def __init__(self, corpus, vocab_size, order, smoothing="kneser_ney", k=1.0, discount=None):
        self.V, self.n, self.smoothing, self.k = vocab_size, order, smoothing, k
        self.counts = {m: defaultdict(Counter) for m in range(1, order + 1)}
        for seq in corpus:
            for i, w in enumerate(seq):
                for m in range(1, order + 1):
                    if i - m + 1 >= 0:
                        self.counts[m][tuple(seq[i - m + 1 : i])][w] += 1
        # Below the top order Kneser-Ney counts distinct left neighbours: N1+(• h w).
        self.kn = {order: self.counts[order]}
        for m in range(1, order):
            self.kn[m] = defaultdict(Counter)
            for context, nexts in self.counts[m + 1].items():
                for w in nexts:
                    self.kn[m][context[1:]][w] += 1
        self.D = {}
        for m in range(1, order + 1):
            values = [c for table in self.kn[m].values() for c in table.values()]
            n1, n2 = values.count(1), values.count(2)
            self.D[m] = discount if discount is not None else (n1 / (n1 + 2 * n2) if n1 else 0.75)

    def prob(self, context, w):
        context = tuple(context[max(0, len(context) - (self.n - 1)):]) if self.n > 1 else ()
        m = len(context) + 1
        if self.smoothing == "add_k":
            table = self.counts[m].get(context, {})
            return (table.get(w, 0) + self.k) / (sum(table.values()) + self.k * self.V)
        return self._kn(context, w, m)

    def _kn(self, context, w, m):
        lower = 1 / self.V if m == 1 else self._kn(context[1:], w, m - 1)
        table = self.kn[m].get(context, {})
        total = sum(table.values())
        if total == 0:
            return lower
        distinct = sum(1 for c in table.values() if c > 0)
        return max(table.get(w, 0) - self.D[m], 0) / total + self.D[m] * distinct / total * lower


corpora = st.integers(2, 5).flatmap(lambda V: st.tuples(
    st.just(V), st.lists(st.lists(st.integers(0, V - 1), max_size=12), min_size=1, max_size=4)))


@settings(max_examples=40, deadline=None)
@given(corpora, st.integers(1, 4), st.sampled_from(["kneser_ney", "add_k"]),
       st.sampled_from([None, 0.5, 1.0]), st.sampled_from([0.1, 1.0]))
def test_matches_reference_and_sums_to_one_for_every_context(corpus_v, order, smoothing, discount, k):
    V, corpus = corpus_v
    if not any(corpus):
        corpus = corpus + [[0]]
    config = NGramConfig(vocab_size=V, order=order, smoothing=smoothing, discount=discount, k=k)
    lm = NGramLM(config).fit(corpus)
    ref = ReferenceNGram(corpus, V, order, smoothing, k, discount)
    for length in range(order):
        for context in itertools.product(range(V), repeat=length):  # seen and unseen contexts
            dist = lm.distribution(context)
            assert dist.sum() == pytest.approx(1.0, abs=1e-12)
            expected = [ref.prob(context, w) for w in range(V)]
            np.testing.assert_allclose(dist, expected, rtol=1e-12, atol=1e-15)
            assert lm.prob(context, V - 1) == pytest.approx(expected[-1], rel=1e-12)


def test_forward_uses_the_previous_n_minus_1_tokens_of_each_row():
    rng = np.random.default_rng(0)
    lm = NGramLM(NGramConfig(vocab_size=7, order=3)).fit(rng.integers(0, 7, (5, 40)))
    idx = torch.from_numpy(rng.integers(0, 7, (2, 9)))
    logits = lm(idx)
    assert logits.shape == (2, 9, 7) and logits.dtype == torch.float32
    for b in range(2):
        for t in range(9):
            expected = np.log(lm.distribution(idx[b, : t + 1].tolist()))
            np.testing.assert_allclose(logits[b, t].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 4])
@pytest.mark.parametrize("smoothing", ["kneser_ney", "add_k"])
def test_cached_decoding_equals_full_forward(order, smoothing):
    rng = np.random.default_rng(1)
    lm = NGramLM(NGramConfig(vocab_size=6, order=order, smoothing=smoothing)).fit(rng.integers(0, 6, 300))
    idx = torch.from_numpy(rng.integers(0, 6, (3, 12)))
    full = lm(idx)
    for prefill in (0, 1, 5):
        torch.testing.assert_close(cached_logits(lm, idx, prefill), full, rtol=0, atol=1e-6)


def test_perplexity_agrees_with_forward_logits():
    rng = np.random.default_rng(2)
    lm = NGramLM(NGramConfig(vocab_size=9, order=3)).fit(rng.integers(0, 9, (4, 50)))
    test = rng.integers(0, 9, (3, 20))
    logits = lm(torch.from_numpy(test))
    nll = -logits[:, :-1].gather(-1, torch.from_numpy(test[:, 1:, None])).mean()
    assert lm.perplexity(test) == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert NGramLM(NGramConfig(vocab_size=9)).perplexity(test) == pytest.approx(9.0)  # unfitted: uniform


def test_input_forms_are_equivalent_and_sequences_do_not_join():
    rows = np.array([[0, 1, 2, 1], [2, 2, 0, 1]])
    ref = NGramLM(NGramConfig(vocab_size=3, order=2)).fit(rows)
    for form in (torch.from_numpy(rows), [list(r) for r in rows], [r for r in rows]):
        other = NGramLM(NGramConfig(vocab_size=3, order=2)).fit(form)
        for a, b in zip(ref.orders, other.orders):
            np.testing.assert_array_equal(a.keys, b.keys)
            np.testing.assert_array_equal(a.counts, b.counts)
    lm = NGramLM(NGramConfig(vocab_size=4, order=2, smoothing="add_k")).fit([[0, 1], [2, 3]])
    assert lm.counts([1]) == {} and lm.counts([0]) == {1: 1}
    single = NGramLM(NGramConfig(vocab_size=4, order=2)).fit([0, 1, 2, 3])  # a flat list is one sequence
    assert single.counts([1]) == {2: 1}


def test_fit_rejects_bad_data():
    with pytest.raises(DataError, match="token id 5 is out of range for vocab_size 4"):
        NGramLM(NGramConfig(vocab_size=4)).fit([[0, 5]])
    with pytest.raises(DataError, match="no tokens"):
        NGramLM(NGramConfig(vocab_size=4)).fit([])


def test_forward_refuses_ids_outside_the_vocabulary():
    # The ids are copied to numpy anyway, so the n-gram model checks their values for free.
    lm = NGramLM(NGramConfig(vocab_size=4, order=2)).fit([[0, 1, 2, 3]])
    with pytest.raises(ConfigError, match="token id 5 is out of range for vocab_size 4"):
        lm(torch.tensor([[0, 5]]))


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    lm = NGramLM(NGramConfig(vocab_size=11, order=3, discount=0.6)).fit(rng.integers(0, 11, (3, 80)))
    path = lm.save(tmp_path / "ngram.npz")
    loaded = NGramLM.load(path)
    assert loaded.config == lm.config
    idx = torch.from_numpy(rng.integers(0, 11, (2, 10)))
    torch.testing.assert_close(loaded(idx), lm(idx), rtol=0, atol=0)
    (tmp_path / "junk.npz").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="not an n-gram model file"):
        NGramLM.load(tmp_path / "junk.npz")


def test_sampling_continues_a_deterministic_pattern():
    lm = NGramLM(NGramConfig(vocab_size=5, order=3, smoothing="add_k", k=1e-6)).fit([[0, 1, 2, 3] * 20])
    rng = np.random.default_rng(0)
    assert lm.sample([2, 3], 6, generator=rng) == [0, 1, 2, 3, 0, 1]
    samples = NGramLM(NGramConfig(vocab_size=5)).sample([], 200, generator=rng)
    assert set(samples) <= set(range(5)) and len(samples) == 200


def test_large_vocabulary_high_order_matches_reference():
    # V^order = 8192^5 overflows int64; the trie's context ids keep keys small.
    rng = np.random.default_rng(4)
    V, order = 8192, 5
    phrases = rng.integers(0, V, (200, 6))
    corpus = phrases[rng.integers(0, 200, 8000)].ravel()  # repeated phrases: long contexts recur
    lm = NGramLM(NGramConfig(vocab_size=V, order=order)).fit(corpus)
    ref = ReferenceNGram([corpus.tolist()], V, order)
    for i in rng.integers(10, len(corpus) - 1, 30):
        context, w = corpus[i - 4 : i].tolist(), int(corpus[i])
        assert lm.prob(context, w) == pytest.approx(ref.prob(context, w), rel=1e-9)
        assert lm.prob(context, (w + 1) % V) == pytest.approx(ref.prob(context, (w + 1) % V), rel=1e-9)
    assert lm.distribution(corpus[:4].tolist()).sum() == pytest.approx(1.0, abs=1e-9)
    assert lm(torch.from_numpy(corpus[:64].reshape(2, 32))).shape == (2, 32, V)
