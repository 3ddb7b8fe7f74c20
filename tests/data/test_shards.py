"""Token shards: round trip, split rules, dtype, manifest, atomicity and the error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.data.shards import (
    MANIFEST, ShardConfig, assign_split, open_shards, read_tokens, token_dtype, write_shards,
)
from lmstack.data.sources import Document
from lmstack.errors import ConfigError, DataError


def _docs(n: int) -> list[Document]:
    return [Document(f"document number {i}: " + "text " * (i % 7 + 1), f"mem:{i}") for i in range(n)]


def _split_docs(tok, tokens: np.ndarray) -> list[str]:
    """Decode a split back into its documents (EOT-terminated runs)."""
    ids = tokens.tolist()
    out, cur = [], []
    for t in ids:
        if t == tok.eot_id:
            out.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert cur == [], "every document must end with EOT"
    return out


def test_round_trip_split_and_manifest(small_tok, tmp_path):
    docs = _docs(60)
    m = write_shards(docs, small_tok, tmp_path, ShardConfig(val_fraction=0.2, workers=1, progress=False), sources=["mem"])
    train = _split_docs(small_tok, read_tokens(tmp_path, "train"))
    val = _split_docs(small_tok, read_tokens(tmp_path, "val"))
    assert sorted(train + val) == sorted(d.text for d in docs)
    assert all(assign_split(t, 0.2) == "val" for t in val)  # No borrowing was needed here.
    assert set(train).isdisjoint(val)
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk["tokenizer_fingerprint"] == small_tok.fingerprint
    assert on_disk["vocab_size"] == small_tok.vocab_size and on_disk["eot_id"] == small_tok.eot_id
    assert on_disk["dtype"] == "uint16" and on_disk["documents"] == 60 == m.documents
    assert on_disk["splits"]["val"]["documents"] == len(val) and on_disk["sources"] == ["mem"]
    assert on_disk["splits"]["train"]["tokens"] == (tmp_path / "train.bin").stat().st_size // 2
    assert on_disk["lmstack_version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "train.bin", "val.bin"]  # No temp files.


def test_workers_do_not_change_the_output(small_tok, tmp_path):
    docs = _docs(40)
    one = write_shards(docs, small_tok, tmp_path / "one", ShardConfig(workers=1, progress=False, val_fraction=0.3))
    # Tiny batches so both workers get several tasks and ordering is exercised.
    two = write_shards(docs, small_tok, tmp_path / "two",
                       ShardConfig(workers=2, progress=False, val_fraction=0.3, batch_chars=64))
    assert one.to_dict() == two.to_dict()
    for f in ("train.bin", "val.bin"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()


def test_tokenizer_can_be_given_as_a_path(tok_path, small_tok, tmp_path):
    m = write_shards(_docs(5), tok_path, tmp_path / "s", ShardConfig(workers=1, progress=False))
    assert m.tokenizer_fingerprint == small_tok.fingerprint


@given(st.lists(st.text(max_size=30), min_size=200, max_size=400, unique=True), st.floats(0.05, 0.5), st.integers(0, 99))
@settings(max_examples=20)
def test_hash_split_fraction_is_close_to_requested(texts, frac, seed):
    n_val = sum(assign_split(t, frac, seed) == "val" for t in texts)
    sd = (len(texts) * frac * (1 - frac)) ** 0.5
    assert abs(n_val - len(texts) * frac) < 6 * sd + 1


@pytest.mark.parametrize("frac, expect", [(0.0, (3, 0)), (0.999, (1, 2))])
def test_empty_split_borrows_a_document(small_tok, tmp_path, frac, expect):
    m = write_shards(_docs(3), small_tok, tmp_path, ShardConfig(val_fraction=frac, workers=1, progress=False))
    assert (m.splits["train"].documents, m.splits["val"].documents) == expect
    train = _split_docs(small_tok, read_tokens(tmp_path, "train"))
    val = _split_docs(small_tok, read_tokens(tmp_path, "val"))
    assert len(train) + len(val) == 3 and len(set(train + val)) == 3
    open_shards(tmp_path)  # File sizes still agree with the manifest.


def test_dtype_choice():
    assert token_dtype(256) == np.uint16 and token_dtype(1 << 16) == np.uint16 and token_dtype((1 << 16) + 1) == np.uint32


def test_other_tokenizer_is_refused_naming_both_fingerprints(small_tok, other_tok, tmp_path):
    write_shards(_docs(4), small_tok, tmp_path, ShardConfig(workers=1, progress=False))
    with pytest.raises(DataError) as e:
        open_shards(tmp_path, other_tok)
    msg = str(e.value)
    assert small_tok.fingerprint in msg and other_tok.fingerprint in msg
    assert "re-run `lmstack data prepare` with this tokenizer" in msg
    assert open_shards(tmp_path, small_tok).tokenizer_fingerprint == small_tok.fingerprint


def test_missing_truncated_and_foreign_shards(small_tok, tmp_path):
    with pytest.raises(DataError, match="manifest.json is missing; run `lmstack data prepare"):
        open_shards(tmp_path)
    write_shards(_docs(10), small_tok, tmp_path, ShardConfig(workers=1, progress=False))
    data = (tmp_path / "train.bin").read_bytes()
    (tmp_path / "train.bin").write_bytes(data[:-2])
    with pytest.raises(DataError, match="incomplete"):
        open_shards(tmp_path)
    (tmp_path / MANIFEST).write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not an lmstack shard manifest"):
        open_shards(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        open_shards(tmp_path)


def test_a_failed_write_leaves_no_partial_files_and_keeps_old_shards(small_tok, tmp_path):
    write_shards(_docs(5), small_tok, tmp_path, ShardConfig(workers=1, progress=False))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def exploding():
        yield from _docs(3)
        raise DataError("source broke")

    with pytest.raises(DataError, match="source broke"):
        write_shards(exploding(), small_tok, tmp_path, ShardConfig(workers=1, progress=False))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_no_documents_and_bad_config(small_tok, tmp_path):
    with pytest.raises(DataError, match="no documents to encode"):
        write_shards([], small_tok, tmp_path, ShardConfig(workers=1, progress=False))
    with pytest.raises(ConfigError, match="val_fraction"):
        write_shards(_docs(2), small_tok, tmp_path, ShardConfig(val_fraction=1.0))
    with pytest.raises(ConfigError, match="workers"):
        write_shards(_docs(2), small_tok, tmp_path, ShardConfig(workers=0))
