"""The incremental trainer learns exactly the merges of the textbook trainer, and rejects bad
input with clear errors."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError, DataError
from lmstack.tokenizer import DEFAULT_SPECIAL_TOKENS, GPT2_PATTERN, Tokenizer, split, train_bpe
from lmstack.tokenizer.trainer import merge_loop


def textbook_merges(chunks: Counter, num_merges: int) -> list[tuple[int, int, int]]:
    """Sennrich et al.'s loop: recount every pair of every word after every merge."""
    words = {tuple(c.encode()): f for c, f in chunks.items()}
    vocab = {i: bytes([i]) for i in range(256)}
    by_bytes = {b: i for i, b in vocab.items()}
    merges = []
    while len(merges) < num_merges:
        counts = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += f
        if not counts:
            break
        pair, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < 2:
            break
        merged = vocab[pair[0]] + vocab[pair[1]]
        new = by_bytes.get(merged)
        if new is None:
            new = len(vocab)
            vocab[new], by_bytes[merged] = merged, new
            merges.append((*pair, new))
        rewritten = {}
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            rewritten[tuple(out)] = rewritten.get(tuple(out), 0) + f
        words = rewritten
    return merges


docs = st.lists(st.text(alphabet="ab c\n", max_size=40), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(docs, st.integers(1, 40))
def test_incremental_trainer_equals_textbook(documents, num_merges):
    chunks = Counter(c for d in documents for c in split(d))
    words = [list(c.encode()) for c in chunks]
    vocab = {i: bytes([i]) for i in range(256)}
    ours = merge_loop(words, list(chunks.values()), vocab, num_merges, progress=False)
    assert ours == textbook_merges(chunks, num_merges)


def test_specials_take_the_last_ids_and_are_never_merged(corpus):
    docs = [d + "<|endoftext|>" for d in corpus[:5]]
    tok = train_bpe(docs, vocab_size=400, progress=False, workers=1)
    assert tok.vocab_size == 400
    assert sorted(tok.special_tokens.values()) == [397, 398, 399]
    assert list(tok.special_tokens) == list(DEFAULT_SPECIAL_TOKENS)
    assert not any(b"<|" in t and b"|>" in t for t in tok.vocab.values())


def test_training_is_deterministic_and_parallel_matches_serial(corpus):
    one = train_bpe(corpus, vocab_size=600, progress=False, workers=1)
    two = train_bpe(corpus, vocab_size=600, progress=False, workers=2)
    assert one == two


def test_gpt2_pattern_option(corpus):
    tok = train_bpe(corpus[:5], vocab_size=300, pattern="gpt2", progress=False, workers=1)
    assert tok.pattern == GPT2_PATTERN


def test_small_corpus_stops_early_when_no_pair_repeats():
    with pytest.warns(UserWarning, match=r"too small for vocab_size 1000.* has 257 ids"):
        tok = train_bpe(["abcdef"], vocab_size=1000, special_tokens=["<|endoftext|>"],
                        progress=False, workers=1)
    assert tok.merges == [] and tok.eot_id == 256 and tok.vocab_size == 257


def test_empty_corpus_is_a_clear_error():
    with pytest.raises(DataError, match="empty corpus"):
        train_bpe([], vocab_size=300, progress=False)
    with pytest.raises(DataError, match="empty corpus"):
        train_bpe(["", ""], vocab_size=300, progress=False)


def test_vocab_too_small_names_the_minimum():
    with pytest.raises(ConfigError, match=r"vocab_size >= 260"):
        train_bpe(["text"], vocab_size=258, progress=False)


def test_bad_pattern_is_a_clear_error():
    with pytest.raises(Exception, match="invalid split pattern"):
        train_bpe(["text"], vocab_size=300, pattern="(unclosed", progress=False)


def test_non_string_documents_are_rejected():
    with pytest.raises(DataError, match="must be str"):
        train_bpe([b"bytes"], vocab_size=300, progress=False, workers=1)


def test_trained_tokenizer_round_trips_its_corpus(tok, corpus):
    assert isinstance(tok, Tokenizer)
    for doc in corpus:
        assert tok.decode(tok.encode_ordinary(doc)) == doc
