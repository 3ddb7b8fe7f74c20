"""WordPiece against Hugging Face `tokenizers`, with vocabularies trained inside the test
(`BertWordPieceTokenizer.train_from_iterator`; nothing is downloaded)."""

import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

tokenizers = pytest.importorskip("tokenizers")  # a dev dependency; CI installs it

from lmstack.errors import ConfigError, SpecialTokenError, TokenizerError  # noqa: E402
from lmstack.tokenizer import Tokenizer  # noqa: E402
from lmstack.tokenizer.bert_pretokenize import BertNormalizer, pre_tokenize  # noqa: E402
from lmstack.tokenizer.wordpiece import WordPieceTokenizer  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = [
    "Hello, world! It's a (small) test: don't panic... #1 $5 @home ~tilde^caret `tick` |pipe| <a>",
    "Café naïve façade Ångström crème brûlée, São Paulo",
    unicodedata.normalize("NFD", "Café naïve façade Ångström crème brûlée, São Paulo"),
    "你好，世界。日本語のテキスト、カタカナ ひらがな 한국어 텍스트 𠀀𠀁 丽",
    "emoji 😀🎉👩‍👩‍👧 flags 🇫🇷🇯🇵 ❤️ 👍🏽",
    "Привет, МИР! Ёлка и ёжик — это русский текст.",
    "مرحبا بالعالم، هذه جملة عربية. ١٢٣ «اقتباس»",
    "ΟΔΟΣ Ελληνικά ΣΊΣΥΦΟΣ, עברית, हिन्दी",
    "MiXeD CaSe WORDS iPhone McDonald's İstanbul STRASSE Straße ǅungla",
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101 + " " + "supercalifragilistic" * 4,
    ("tabs\t\tand    spaces\n\nNBSP\u00a0LS\u2028PS\u2029 ideo\u3000space zero\u200bwidth "
     "\x0bvt\x0cff\x1cfs\x85nel\r\nCRLF  trailing   "),
    "nul\x00bell\x07 soft\u00adhyphen bom\ufeff repl\ufffd private\ue000 ctl\x1f end",
    "the [MASK] of [CLS] France [SEP] is [UNK]; [mask] [PAD]x y[SEP]z",
    "combining e\u0301 a\u0308 o\u0302\u0323 and Zalgo z\u0335\u0327\u0301",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    "", " ", "\n\t ", "!!!", "'",
]
CORPUS = TEXTS * 3 + [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "Le cœur a ses raisons que la raison ne connaît point. Ça va? Très bien, merci.",
    "Съешь же ещё этих мягких французских булок да выпей чаю.",
    "中华人民共和国成立于一九四九年。東京は日本の首都です。",
] * 5
# Configurations as (lowercase, strip_accents) in `tokenizers`' names.
CASES = [(True, None), (False, None), (True, False), (False, True)]


def train(lowercase=True, strip_accents=None, vocab_size=700):
    """A BertWordPieceTokenizer trained on CORPUS with these options."""
    hf = tokenizers.BertWordPieceTokenizer(lowercase=lowercase, strip_accents=strip_accents)
    hf.train_from_iterator(CORPUS, vocab_size=vocab_size, special_tokens=SPECIALS,
                           limit_alphabet=300, show_progress=False)
    return hf


def write_vocab(hf, path):
    vocab = hf.get_vocab()
    path.write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"lower={c[0]},strip={c[1]}")
def pair(request, tmp_path_factory):
    """(ours from vocab.txt, tokenizers from the same vocab.txt) for one configuration."""
    lowercase, strip = request.param
    vocab_txt = write_vocab(train(lowercase, strip), tmp_path_factory.mktemp("wp") / "vocab.txt")
    ref = tokenizers.BertWordPieceTokenizer(str(vocab_txt), lowercase=lowercase,
                                            strip_accents=strip)
    ours = WordPieceTokenizer.load(vocab_txt, do_lower_case=lowercase, strip_accents=strip)
    return ours, ref


@pytest.fixture(scope="module")
def uncased(tmp_path_factory):
    """(ours from tokenizer.json, tokenizers) for the uncased default."""
    # built from the trained vocabulary: a freshly trained one has no post-processor yet
    ref = tokenizers.BertWordPieceTokenizer(train().get_vocab())
    path = tmp_path_factory.mktemp("wp") / "tokenizer.json"
    ref.save(str(path))
    return WordPieceTokenizer.load(path), tokenizers.Tokenizer.from_file(str(path))


def same(ours, ref, text, text_pair=None, **kwargs):
    mine = ours.encode(text, text_pair, allowed_special="all", **kwargs)
    theirs = ref.encode(text, text_pair)
    assert mine.ids == theirs.ids, (text, mine.tokens, theirs.tokens)
    assert mine.tokens == theirs.tokens
    assert mine.token_type_ids == theirs.type_ids
    assert mine.attention_mask == theirs.attention_mask


# ---- ids equal to tokenizers --------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_tokenizers(pair, text):
    same(*pair, text)


def test_pairs_carry_token_type_ids(pair):
    ours, ref = pair
    for a, b in zip(TEXTS, TEXTS[1:] + TEXTS[:1]):
        same(ours, ref, a, b)
    enc = ours.encode("hello", "world")
    assert enc.token_type_ids == [0] * (enc.ids.index(ours.token_to_id("[SEP]")) + 1) + \
        [1] * (len(enc) - enc.ids.index(ours.token_to_id("[SEP]")) - 1)


def test_without_special_tokens(pair):
    ours, ref = pair
    for text in TEXTS:
        assert ours.encode(text, add_special_tokens=False, allowed_special="all").ids == \
            ref.encode(text, add_special_tokens=False).ids


def test_lowercasing_and_accents_change_the_ids(pair):
    """The comparison can fail: the same vocabulary with the other casing gives other ids."""
    ours, ref = pair
    flipped = WordPieceTokenizer(ours.vocab, type(ours.config)(
        do_lower_case=not ours.config.do_lower_case, strip_accents=ours.config.strip_accents))
    text = TEXTS[8] + " " + TEXTS[1]
    assert flipped.encode(text).ids != ref.encode(text).ids


def test_tokenizer_json_equals_tokenizers(uncased):
    ours, ref = uncased
    for a, b in zip(TEXTS, reversed(TEXTS)):
        same(ours, ref, a)
        same(ours, ref, a, b)
    assert ours.vocab_size == ref.get_vocab_size()


def test_template_processing_and_normalizer_options(tmp_path):
    """A `TemplateProcessing` post-processor and BertNormalizer's other switches."""
    from tokenizers import models, normalizers, pre_tokenizers, processors

    vocab = train().get_vocab()
    for clean, chinese in [(False, True), (True, False), (False, False)]:
        hf = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        hf.normalizer = normalizers.BertNormalizer(clean_text=clean, handle_chinese_chars=chinese)
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1 [MASK]:1",
            special_tokens=[(t, vocab[t]) for t in ("[CLS]", "[SEP]", "[MASK]")])
        hf.add_special_tokens(SPECIALS)
        hf.save(str(tmp_path / "tokenizer.json"))
        ours = WordPieceTokenizer.load(tmp_path / "tokenizer.json")
        for a, b in zip(TEXTS, reversed(TEXTS)):
            same(ours, hf, a)
            same(ours, hf, a, b)


def test_added_tokens_match_whole(uncased, tmp_path):
    """Added tokens, normalized (matched after lowercasing) or not, special or not."""
    hf = tokenizers.Tokenizer.from_str(uncased[1].to_str())
    hf.add_tokens(["NewWord", tokenizers.AddedToken("KeepCase", normalized=False), "中文字"])
    hf.add_special_tokens(["<extra>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = WordPieceTokenizer.load(tmp_path / "tokenizer.json")
    for text in ["a NewWord newword NEWWORDS", "KeepCase keepcase", "中文字 中文", "x<extra>y"]:
        same(ours, hf, text)
        same(ours, hf, text, text)
    with pytest.raises(SpecialTokenError, match="<extra>"):
        ours.encode("x<extra>y")


def test_directory_reads_tokenizer_config(tmp_path):
    hf = train(lowercase=False)
    write_vocab(hf, tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": False, "model_max_length": 16, "mask_token": "[MASK]"}))
    ours = WordPieceTokenizer.load(tmp_path)
    assert ours.config.do_lower_case is False and ours.config.model_max_length == 16
    same(ours, tokenizers.BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=False),
         "MiXeD CaSe WORDS")
    with pytest.raises(TokenizerError, match="max_length=16"):
        ours.encode(TEXTS[0])


# stable: characters the running Python and `tokenizers`' (older) tables class alike; see
# test_every_character_pretokenizes_like_tokenizers.
def stable(ch):
    return unicodedata.category(ch) not in ("Cn", "Cs") and \
        unicodedata.ucd_3_2_0.category(ch) == unicodedata.category(ch)


random_text = st.lists(st.one_of(
    st.characters().filter(stable),
    st.sampled_from(sorted(set("".join(TEXTS)) - {"\ue000"})),  # characters the vocab knows
    st.sampled_from(["##", "[MASK]", "[SEP]", " ", "\u0301"]),
), max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=random_text, other=random_text)
def test_random_text_equals_tokenizers(pair, text, other):
    same(*pair, text)
    same(*pair, text, other)


@pytest.mark.slow
@pytest.mark.parametrize("lowercase, strip", [(False, False), (True, None)])
def test_every_character_pretokenizes_like_tokenizers(lowercase, strip):
    """Each code point between two letters: words equal `tokenizers`' wherever both Unicode
    tables agree on the character; they differ only where its class changed after Unicode 3.2
    (the negative control: such characters exist, so the comparison can tell)."""
    ref_norm = tokenizers.normalizers.BertNormalizer(strip_accents=strip, lowercase=lowercase)
    ref_pre = tokenizers.pre_tokenizers.BertPreTokenizer()
    ours = BertNormalizer(strip_accents=strip, lowercase=lowercase)

    def differ(chars):
        text = " ".join(f"a{ch}b" for ch in chars)
        theirs = [w for w, _ in ref_pre.pre_tokenize_str(ref_norm.normalize_str(text))]
        return pre_tokenize(ours.normalize(text)) != theirs

    blocks = ([chr(cp) for cp in range(lo, lo + 256) if not 0xD800 <= cp <= 0xDFFF]
              for lo in range(0, 0x110000, 256))
    # whole blocks first; one character at a time only inside a block that differs
    odd = [ch for block in blocks if block and differ(block) for ch in block if differ([ch])]
    assert [f"U+{ord(c):04X}" for c in odd if stable(c)] == []
    assert len(odd) > 50


# ---- lengths, padding, decoding -------------------------------------------------------------
def test_truncation_equals_tokenizers(uncased):
    ours, ref = uncased
    texts = [TEXTS[0], TEXTS[5], "a b", "x"]
    try:
        for max_length in (3, 4, 5, 6, 8, 13):
            ref.enable_truncation(max_length)
            for a in texts:
                assert ours.encode(a, max_length=max_length, truncation=True).ids == \
                    ref.encode(a).ids
                for b in texts if max_length >= 5 else ():  # (below: test_too_long_...)
                    assert ours.encode(a, b, max_length=max_length, truncation=True).ids == \
                        ref.encode(a, b).ids
    finally:
        ref.no_truncation()


def test_longest_first_on_every_small_pair():
    vocab = SPECIALS + list("ab")
    ref = tokenizers.BertWordPieceTokenizer({t: i for i, t in enumerate(vocab)})
    ours = WordPieceTokenizer.from_tokens(vocab)
    for max_length in range(5, 12):
        ref.enable_truncation(max_length)
        for n_a in range(10):
            for n_b in range(10):
                a, b = " ".join("a" * n_a), " ".join("b" * n_b)
                assert ours.encode(a, b, max_length=max_length, truncation=True).ids == \
                    ref.encode(a, b).ids


def test_too_long_is_an_error_unless_truncation(uncased):
    ours, _ = uncased
    n = len(ours.encode(TEXTS[0]))
    assert len(ours.encode(TEXTS[0], max_length=n)) == n  # exactly the limit fits
    with pytest.raises(TokenizerError, match=rf"is {n} tokens .* max_length={n - 1}.*"
                                             "truncation=True"):
        ours.encode(TEXTS[0], max_length=n - 1)
    with pytest.raises(TokenizerError, match="needs a length"):
        ours.encode("hi", truncation=True)
    # `tokenizers` would leave a sequence empty, or not truncate at all
    with pytest.raises(TokenizerError, match="no room"):
        ours.encode("hi", max_length=2, truncation=True)
    with pytest.raises(TokenizerError, match="no room for the pair"):
        ours.encode("hi there", "you", max_length=4, truncation=True)


def test_padded_batch_equals_tokenizers(uncased):
    ours, ref = uncased
    texts, pairs = TEXTS[:6], TEXTS[6:12]
    ref.enable_padding(pad_id=ref.token_to_id("[PAD]"), pad_token="[PAD]")
    try:
        expected = [ref.encode_batch(texts), ref.encode_batch(list(zip(texts, pairs)))]
    finally:
        ref.no_padding()
    for batch, theirs in zip([ours.encode_batch(texts, allowed_special="all"),
                              ours.encode_batch(texts, pairs, allowed_special="all")], expected):
        assert batch.ids == [e.ids for e in theirs]
        assert batch.attention_mask == [e.attention_mask for e in theirs]
        assert batch.token_type_ids == [e.type_ids for e in theirs]
        assert len({len(row) for row in batch.ids}) == 1
    ragged = ours.encode_batch(["a", "a b c"], padding=False)
    assert [len(r) for r in ragged.ids] == [3, 5]


@pytest.mark.parametrize("skip", [False, True])
def test_decode_equals_tokenizers(uncased, skip):
    ours, ref = uncased
    for text in TEXTS:
        ids = ref.encode(text, TEXTS[0]).ids
        assert ours.decode(ids, skip_special_tokens=skip) == \
            ref.decode(ids, skip_special_tokens=skip)
    assert ours.decode(ours.encode("hello, world!").ids, skip_special_tokens=True) == \
        "hello, world!"


def test_words_longer_than_the_limit_are_unknown():
    tok = WordPieceTokenizer.from_tokens(SPECIALS + ["a", "##a"], max_input_chars_per_word=5)
    assert tok.tokenize("aaaaa aaaaaa") == ["a", "##a", "##a", "##a", "##a", "[UNK]"]
    assert tok.tokenize("ab") == ["[UNK]"]  # one piece with no match makes the word unknown


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["[UNK]", "[CLS]", "[SEP]", "[MASK]"])
def test_vocabulary_missing_a_special_is_named(missing, tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("".join(t + "\n" for t in SPECIALS + ["a"] if t != missing))
    with pytest.raises(TokenizerError, match=rf"lacks \['\{missing[:-1]}\]'\]"):
        WordPieceTokenizer.load(path)


def test_foreign_or_broken_files_are_refused(uncased, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}))
    with pytest.raises(TokenizerError, match="model type 'BPE' is not WordPiece"):
        WordPieceTokenizer.load(path)
    d = json.loads(uncased[1].to_str())
    for field, value, message in [
        ("normalizer", {"type": "Lowercase"}, "normalizer 'Lowercase'"),
        ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer 'Whitespace'"),
        ("post_processor", {"type": "RobertaProcessing"}, "post_processor 'RobertaProcessing'"),
        ("decoder", {"type": "ByteLevel"}, "decoder"),
    ]:
        path.write_text(json.dumps({**d, field: value}))
        with pytest.raises(TokenizerError, match=message):
            WordPieceTokenizer.load(path)
    path.write_text(json.dumps(d))
    with pytest.raises(TokenizerError, match="WordPieceTokenizer"):
        Tokenizer.load(path)  # the byte-level BPE loader points at this one
    (tmp_path / "empty.txt").write_text("")
    for bad, message in [(tmp_path / "empty.txt", "empty"), (tmp_path / "nope", "no such"),
                         (tmp_path / "sub", "neither")]:
        if bad.name == "sub":
            bad.mkdir()
        with pytest.raises(TokenizerError, match=message):
            WordPieceTokenizer.load(bad)


def test_bad_calls_are_refused(uncased):
    ours, _ = uncased
    with pytest.raises(TokenizerError, match="empty list"):
        ours.encode_batch([])
    with pytest.raises(TokenizerError, match="one string"):
        ours.encode_batch("text")
    with pytest.raises(TokenizerError, match="2 texts but 1 pairs"):
        ours.encode_batch(["a", "b"], ["c"])
    with pytest.raises(SpecialTokenError, match=r"'\[MASK\]'"):
        ours.encode("the [MASK] of France")
    assert ours.encode("[MASK]", disallowed_special=()).tokens == ["[CLS]", "[", "mask", "]",
                                                                     "[SEP]"]
    with pytest.raises(ConfigError, match="unknown WordPiece option"):
        WordPieceTokenizer.from_tokens(SPECIALS, lowercase=True)
    with pytest.raises(TokenizerError, match="id 99999"):
        ours.decode([99999])
    no_pad = WordPieceTokenizer.from_tokens(SPECIALS[1:] + ["a"])
    with pytest.raises(TokenizerError, match="pad token"):
        no_pad.encode_batch(["a", "a a"])
