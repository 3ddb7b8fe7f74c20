"""The pipeline end to end on a small corpus: what is removed, scrubbed, reported and written."""

from __future__ import annotations

import json

import pytest

from lmstack.data.dedup import DedupConfig
from lmstack.data.filters import FilterConfig
from lmstack.data.prepare import REPORT, PrepareConfig, PrepareReport, clean_documents, format_report, prepare
from lmstack.data.shards import open_shards, read_tokens
from lmstack.errors import ConfigError, DataError
from lmstack.tokenizer import Tokenizer

MODULE = "def area(r):\n    # Area of a circle.\n    return 3.14159 * r * r\n\n\nprint(area(2))\n"
LONG = " ".join(f"word{i} alpha beta gamma" for i in range(200))


def _corpus(make_corpus):
    return make_corpus({
        "a.py": MODULE,
        "b.py": MODULE.upper(),  # exact duplicate up to case
        "c.txt": LONG,
        "d.txt": LONG.replace("word7 ", "WORDSEVEN "),  # near duplicate of c
        "e.txt": "contact ann@example.com, key AKIAIOSFODNN7EXAMPLE\nserver at 10.1.2.3\n",
        "f.txt": "",  # removed by min_chars
        "g.txt": "spam line\n" * 30,  # removed by max_duplicate_line_fraction
        "bad.txt": b"\xff\xfe not utf-8 \xfa",
        "sub/h.md": "Caf\u0065\u0301 cr\u00e8me.\r\nSecond line.\r\n",
    })


def _cfg(root, out, tok_path, **kw) -> PrepareConfig:
    return PrepareConfig(sources=[str(root)], out_dir=str(out), tokenizer=str(tok_path), workers=1,
                         progress=False, val_fraction=0.3, **kw)


def test_prepare_end_to_end(make_corpus, tok_path, small_tok, tmp_path):
    root = _corpus(make_corpus)
    out = tmp_path / "out"
    report = prepare(_cfg(root, out, tok_path))

    assert report.documents_seen == 8 and report.non_utf8_files == [str(root / "bad.txt")]
    removed = {k: v.documents for k, v in report.removed.items()}
    assert removed == {"exact_duplicate": 1, "near_duplicate": 1, "min_chars": 1, "max_duplicate_line_fraction": 1}
    assert report.documents_kept == 4
    # Bytes add up: every document seen is either kept or removed by exactly one rule.
    assert report.bytes_seen == report.bytes_kept + sum(v.bytes for v in report.removed.values())
    assert report.pii_replacements == {"aws_key": 1, "email": 1, "ipv4": 1} and report.documents_scrubbed == 1

    manifest = open_shards(out, small_tok)
    assert manifest.documents == 4 and report.tokens == {s: i.tokens for s, i in manifest.splits.items()}
    text = "".join(small_tok.decode(read_tokens(out, s).tolist()) for s in ("train", "val"))
    assert "ann@example.com" not in text and "AKIA" not in text and "10.1.2.3" not in text
    assert "<EMAIL>" in text and "<SECRET>" in text and "<IP>" in text
    assert "Caf\u00e9 cr\u00e8me.\nSecond line.\n" in text  # NFC and LF line endings.
    assert text.count("<|endoftext|>") == 4
    content_tokens = sum(report.tokens.values()) - 4
    assert report.bytes_per_token == pytest.approx(report.bytes_tokenized / content_tokens)

    on_disk = json.loads((out / REPORT).read_text())
    assert on_disk["documents_kept"] == 4 and on_disk["removed"]["near_duplicate"]["documents"] == 1
    # The shards carry their tokenizer: `lmstack train --set data=OUT` needs nothing else.
    assert Tokenizer.load(out / "tokenizer.json").fingerprint == manifest.tokenizer_fingerprint


def test_switches_turn_stages_off(make_corpus, tmp_path):
    root = _corpus(make_corpus)
    cfg = PrepareConfig(sources=[str(root)], filters=FilterConfig.off(), pii=False,
                        dedup=DedupConfig(exact=False, near=False), progress=False)
    report = PrepareReport()
    docs = list(clean_documents(cfg, report))
    assert len(docs) == 8 and report.removed == {} and report.pii_replacements == {}
    assert any("ann@example.com" in d.text for d in docs)


def test_clean_documents_matches_what_prepare_encodes(make_corpus, tok_path, small_tok, tmp_path):
    root = _corpus(make_corpus)
    cfg = _cfg(root, tmp_path / "out", tok_path)
    cleaned = [d.text for d in clean_documents(cfg)]
    prepare(cfg)
    encoded = "".join(small_tok.decode(read_tokens(tmp_path / "out", s).tolist()) for s in ("train", "val"))
    # Each document ends with EOT, so splitting on it leaves one empty string at the end.
    assert sorted(encoded.split("<|endoftext|>")[:-1]) == sorted(cleaned)


def test_format_report_shows_every_rule_and_totals(make_corpus, tok_path, tmp_path):
    report = prepare(_cfg(_corpus(make_corpus), tmp_path / "out", tok_path))
    table = format_report(report)
    for rule in report.removed:
        assert f"removed: {rule}" in table
    assert "seen" in table and "kept" in table and "bytes per token" in table and "non-UTF-8" in table
    assert f"{report.bytes_seen:,}" in table


def test_bad_inputs(make_corpus, tmp_path, tok_path):
    root = _corpus(make_corpus)
    with pytest.raises(ConfigError, match="no tokenizer given.*--tokenizer"):
        prepare(PrepareConfig(sources=[str(root)], progress=False))
    with pytest.raises(ConfigError, match="normalization"):
        prepare(_cfg(root, tmp_path / "o", tok_path, normalization="NFX"))
    with pytest.raises(ConfigError, match="no sources"):
        list(clean_documents(PrepareConfig(sources=[])))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_bytes(b"\xff")
    with pytest.raises(DataError, match="is empty"):
        prepare(_cfg(empty, tmp_path / "o", tok_path))
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_everything_filtered_out_is_an_error(make_corpus, tmp_path, tok_path):
    root = make_corpus({"a.txt": "!!! ??? ...", "b.txt": "### $$$ %%%"})  # no words: filtered
    with pytest.raises(DataError, match="every document was filtered out"):
        prepare(_cfg(root, tmp_path / "o", tok_path))


def test_empty_files_are_an_empty_corpus_not_a_filtered_one(make_corpus, tmp_path, tok_path):
    root = make_corpus({"a.txt": "", "b.txt": " \n"})
    with pytest.raises(DataError, match=r"holds no text: its 2 document\(s\) are empty"):
        prepare(_cfg(root, tmp_path / "o2", tok_path))


def test_source_string_is_accepted_as_one_source(make_corpus):
    root = make_corpus({"a.txt": "hello world"})
    assert [d.text for d in clean_documents(PrepareConfig(sources=str(root), progress=False))] == ["hello world"]
