"""Hugging Face `tokenizer.json` in both directions, checked against the `tokenizers` library
with tokenizers trained inside the test (nothing is downloaded)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

tokenizers = pytest.importorskip("tokenizers")  # a dev dependency; CI installs it

from lmstack.errors import TokenizerError  # noqa: E402
from lmstack.tokenizer import Tokenizer, load_hf, save_hf  # noqa: E402
from lmstack.tokenizer.hf import bytes_to_unicode  # noqa: E402

from ..conftest import MULTILINGUAL  # noqa: E402

CODE = "def hello(name):\n    return f'Hi {name}!'  # comment\n\n\tx = [1, 22, 333, 4444]\n"
SAMPLES = MULTILINGUAL + [CODE, "", " ", "\n\n\n", "a" * 3000]
assigned = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cn"]), max_size=60)


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    path = save_hf(tok, tmp_path_factory.mktemp("hf") / "tokenizer.json")
    return tokenizers.Tokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def hf_trained(corpus, tmp_path_factory):
    from tokenizers import models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(corpus, trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    hf.save(str(path))
    return hf, path


@pytest.mark.parametrize("text", SAMPLES)
def test_export_encodes_like_tokenizers(tok, exported, text):
    assert exported.encode(text).ids == tok.encode(text, allowed_special="all")


def test_export_corpus_and_specials(tok, exported, corpus):
    for doc in corpus:
        assert exported.encode(doc).ids == tok.encode_ordinary(doc)
    text = "one<|endoftext|>two<|im_start|>"
    assert exported.encode(text).ids == tok.encode(text, allowed_special="all")
    assert exported.decode(tok.encode(CODE), skip_special_tokens=False) == CODE


@settings(max_examples=200, deadline=None)
@given(assigned)
def test_export_equals_tokenizers_on_any_text(tok, exported, text):
    assert exported.encode(text).ids == tok.encode(text, allowed_special="all")


def test_import_hf_trained_tokenizer(hf_trained, corpus):
    hf, path = hf_trained
    ours = Tokenizer.load(path)
    assert ours.vocab_size == hf.get_vocab_size()
    assert ours.eot_id == hf.token_to_id("<|endoftext|>")
    for k, text in enumerate(corpus + SAMPLES):
        assert ours.encode_ordinary(text) == hf.encode(text).ids
        if k % 4 == 0 or text in SAMPLES:  # the pure-Python reference on a quarter of them
            assert ours.encode_ordinary(text, engine="reference") == hf.encode(text).ids


@pytest.fixture(scope="module")
def hf_imported(hf_trained):
    return Tokenizer.load(hf_trained[1])


@settings(max_examples=200, deadline=None)
@given(assigned)
def test_import_equals_tokenizers_on_any_text(hf_trained, hf_imported, text):
    assert hf_imported.encode(text, allowed_special="all") == hf_trained[0].encode(text).ids


def test_export_then_import_is_identity(tok, tmp_path):
    assert Tokenizer.load(save_hf(tok, tmp_path / "out")).encode(CODE) == tok.encode(CODE)


def test_load_hf_is_explicit(tok, tmp_path):
    """`load_hf` reads only Hugging Face's format; `Tokenizer.load` reads both."""
    hf_path = save_hf(tok, tmp_path / "hf")
    # the same vocabulary; the merge list may name another split of a token (same encoding)
    assert load_hf(hf_path) == Tokenizer.load(hf_path)
    assert load_hf(hf_path).vocab == tok.vocab
    ours = tok.save(tmp_path / "ours.json")
    assert Tokenizer.load(ours) == tok
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json"):
        load_hf(ours)


def test_byte_table_is_a_bijection_onto_printables():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


def _edit(path, tmp_path, change):
    d = json.loads(path.read_text())
    change(d)
    out = tmp_path / "edited.json"
    out.write_text(json.dumps(d))
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer 'Lowercase'"),
        (lambda d: d.update(normalizer={"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Strip"}]}), "normalizer 'Strip'"),
        (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "does not end with"),
        (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Metaspace"}, {"type": "ByteLevel"}]}), "'Metaspace' is not supported"),
        (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "MergedWithPrevious"},
            {"type": "ByteLevel"}]}), "behavior 'MergedWithPrevious'"),
        (lambda d: d["model"].update(type="Unigram"), "'Unigram' is not supported"),
        (lambda d: d["model"].update(byte_fallback=True), "byte_fallback"),
        (lambda d: (d["model"]["vocab"].pop("Ġ"), d["model"].update(unk_token="<|endoftext|>"),
                    d["model"].update(merges=[m for m in d["model"]["merges"]
                                              if "Ġ" not in m[0] + m[1]])), "unk_token"),
        (lambda d: d["added_tokens"][0].update(lstrip=True), "lstrip=true"),
        (lambda d: d.update(post_processor={"type": "RobertaProcessing"}), "'RobertaProcessing'"),
        (lambda d: d.update(decoder={"type": "Metaspace"}), "decoder 'Metaspace'"),
        (lambda d: d["model"]["merges"].insert(0, ["Ġq", "zzz"]), "not in vocab"),
    ],
)
def test_foreign_hf_files_are_refused_clearly(hf_trained, tmp_path, change, message):
    _, path = hf_trained
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.load(_edit(path, tmp_path, change))
