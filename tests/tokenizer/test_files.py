"""Our JSON format round-trips, and corrupt or foreign files fail with errors that say so."""

import json
import pickle

import pytest

from lmstack.errors import TokenizerError
from lmstack.tokenizer import Tokenizer, train_bpe


def test_save_load_round_trip(tok, tmp_path, corpus):
    path = tok.save(tmp_path / "sub" / "tok.json")
    loaded = Tokenizer.load(path)
    assert loaded == tok and loaded.fingerprint == tok.fingerprint
    assert loaded.encode_ordinary(corpus[0]) == tok.encode_ordinary(corpus[0])
    assert not list(tmp_path.glob("**/*.tmp*"))  # written via temp file + rename


def test_directory_with_tokenizer_json_loads(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    assert Tokenizer.load(tmp_path) == tok


def test_file_holds_pattern_merges_specials_version(tok, tmp_path):
    d = json.loads(tok.save(tmp_path / "t.json").read_text())
    assert d["format"] == "lmstack-bpe" and d["version"] == 1
    assert d["pattern"] == tok.pattern
    assert len(d["merges"]) == len(tok.merges) and d["special_tokens"] == tok.special_tokens


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone == tok and clone.encode("pickled text") == tok.encode("pickled text")


def test_fingerprint_differs_between_tokenizers(tok, corpus):
    other = train_bpe(corpus[:3], vocab_size=500, progress=False, workers=1)
    assert other.fingerprint != tok.fingerprint


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2, 3]", "not a tokenizer"),
        ('{"hello": "world"}', "not an lmstack tokenizer"),
        ('{"format": "lmstack-bpe", "version": 99}', "format version 99"),
        ('{"format": "lmstack-bpe", "version": 1, "pattern": "x"}', "lacks the field"),
        ('{"format": "lmstack-bpe", "version": 1, "pattern": "x", "special_tokens": {},'
         ' "merges": [[1, 99999, 300]]}', "uses an id that no earlier token defines"),
        ('{"format": "lmstack-bpe", "version": 1, "pattern": "x", "special_tokens": {"a": 5},'
         ' "merges": []}', "collide"),
        ('{"format": "lmstack-bpe", "version": 1, "pattern": "(", "special_tokens": {},'
         ' "merges": []}', "invalid split pattern"),
        ('{"format": "lmstack-bpe", "version": 1, "pattern": "x", "special_tokens": {},'
         ' "merges": [[1]]}', "each merge is"),
        ('{"model": {"type": "WordPiece"}}', "not supported"),
    ],
)
def test_corrupt_or_foreign_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.load(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        Tokenizer.load(tmp_path / "bin.json")
