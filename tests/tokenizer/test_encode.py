"""Encoding and decoding: the tiktoken engine equals the pure-Python reference on any text,
special tokens follow tiktoken's policy, and streaming never emits half a character."""

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import SpecialTokenError, TokenizerError
from lmstack.tokenizer.tokenizer import fix_surrogates

from ..conftest import MULTILINGUAL

TRICKY = ["😀", "👩‍👧", "你", "語", "e\u0301", "\u0308", "\r\n", "\r", "\n", "\u00a0", "\u2028",
          "\u2029", "\t", " ", "  ", "'s", "'LL", "123456", "٣", "_", ".", "\ufeff", "\x00"]
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
# Code points unassigned in Python's Unicode 14 tables are left out: `regex` and tiktoken's Rust
# regex ship different (newer) Unicode versions, and may class a newly assigned character as a
# letter in one and a number in the other (docs/tokenizer.md, "Unicode versions").
assigned = st.characters(exclude_categories=["Cs", "Cn"])
texts = st.lists(
    st.one_of(st.text(alphabet=assigned, max_size=8), st.sampled_from(TRICKY), surrogates,
              st.text(alphabet="ab \n", max_size=6)),
    max_size=30,
).map("".join).filter(  # a high and a low surrogate side by side join into one code point,
    # which may be unassigned in Python's tables (U+32400 is Unicode 15): left out, as above
    lambda t: all(unicodedata.category(c) != "Cn" for c in fix_surrogates(t)))


@settings(max_examples=400, deadline=None)
@given(texts)
def test_fast_engine_equals_reference(tok, text):
    assert tok.encode_ordinary(text) == tok.encode_ordinary(text, engine="reference")


@settings(max_examples=300, deadline=None)
@given(texts)
def test_decode_inverts_encode(tok, text):
    assert tok.decode(tok.encode_ordinary(text)) == fix_surrogates(text)


def test_surrogates_are_repaired_like_tiktoken(tok):
    assert tok.decode(tok.encode_ordinary("a\ud800b")) == "a\ufffdb"
    assert tok.encode_ordinary("\ud83d\ude00") == tok.encode_ordinary("😀")


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_multilingual_fast_equals_reference(tok, text):
    assert tok.encode(text) == tok.encode(text, engine="reference")


def test_corpus_fast_equals_reference(tok, corpus):
    for doc in corpus[:10]:
        assert tok.encode_ordinary(doc) == tok.encode_ordinary(doc, engine="reference")


def test_long_single_piece_both_engines(tok):
    text = "a" * 1_000_000
    fast = tok.encode_ordinary(text)
    assert fast == tok.encode_ordinary(text, engine="reference")
    assert tok.decode(fast) == text


def test_special_tokens_raise_by_default(tok):
    with pytest.raises(SpecialTokenError, match="allowed_special"):
        tok.encode("hi <|endoftext|> there")


def test_allowed_special_encodes_the_special_id(tok):
    ids = tok.encode("a<|endoftext|>b<|im_start|>", allowed_special="all")
    assert ids == (tok.encode("a") + [tok.eot_id] + tok.encode("b")
                   + [tok.special_tokens["<|im_start|>"]])
    only_eot = tok.encode("a<|endoftext|>", allowed_special={"<|endoftext|>"})
    assert only_eot[-1] == tok.eot_id
    with pytest.raises(SpecialTokenError, match="<\\|im_end\\|>"):
        tok.encode("<|endoftext|><|im_end|>", allowed_special={"<|endoftext|>"})


def test_ordinary_and_disallowed_empty_treat_specials_as_text(tok):
    text = "x<|endoftext|>y"
    ids = tok.encode_ordinary(text)
    assert tok.eot_id not in ids and tok.decode(ids) == text
    assert tok.encode(text, disallowed_special=()) == ids
    assert tok.encode(text, engine="reference", disallowed_special=()) == ids


def test_unknown_allowed_special_is_an_error(tok):
    with pytest.raises(SpecialTokenError, match="does not have"):
        tok.encode("x", allowed_special={"<|nope|>"})


def test_special_token_decodes_to_its_string(tok):
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_decode_replace_by_default_and_strict_on_request(tok):
    half = tok.encode_ordinary("é")  # two bytes; byte tokens exist for each
    ids = [tok.byte_ids[0xC3]]
    assert tok.decode(ids) == "\ufffd"
    with pytest.raises(TokenizerError, match="not valid UTF-8"):
        tok.decode(ids, errors="strict")
    assert tok.decode(half, errors="strict") == "é"


def test_unknown_id_is_an_error(tok):
    with pytest.raises(TokenizerError, match="not in this tokenizer"):
        tok.decode([tok.vocab_size + 5])


@settings(max_examples=200, deadline=None)
@given(texts)
def test_incremental_decoder_never_emits_half_a_character(tok, text):
    ids = tok.encode_ordinary(text)
    dec = tok.decoder()
    pieces = [dec.add(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces if "\ufffd" not in fix_surrogates(text))


def test_incremental_decoder_holds_partial_bytes(tok):
    b = tok.byte_ids
    dec = tok.decoder()
    assert dec.add(b[0xE4]) == ""  # first byte of 你 (E4 BD A0)
    assert dec.add(b[0xBD]) == ""
    assert dec.add([b[0xA0], b[ord("!")]]) == "你!"
    assert dec.add(b[0xE4]) == "" and dec.flush() == "\ufffd"


def test_batch_encode_matches_single(tok, corpus):
    assert tok.encode_ordinary_batch(corpus[:5]) == [tok.encode_ordinary(d) for d in corpus[:5]]
