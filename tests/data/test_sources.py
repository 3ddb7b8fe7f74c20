"""Reading documents: files, .jsonl, directories, globs, stdlib; and the errors on bad input."""

from __future__ import annotations

import itertools
import json

import pytest

from lmstack.data import sources
from lmstack.data.sources import SourceStats, iter_documents
from lmstack.errors import DataError


def test_whole_file_is_one_document(make_corpus):
    root = make_corpus({"a.txt": "hello\nworld\n"})
    docs = list(iter_documents(str(root / "a.txt")))
    assert [d.text for d in docs] == ["hello\nworld\n"]
    assert docs[0].source == str(root / "a.txt")


def test_directory_is_recursive_sorted_and_glob_filtered(make_corpus):
    root = make_corpus({"b.py": "b", "sub/a.py": "a", "sub/deeper/c.py": "c", "notes.md": "md"})
    assert sorted(d.text for d in iter_documents(str(root), glob="*.py")) == ["a", "b", "c"]
    assert sorted(d.text for d in iter_documents(str(root))) == ["a", "b", "c", "md"]


def test_glob_pattern_and_several_specs(make_corpus):
    root = make_corpus({"x/1.txt": "one", "x/2.txt": "two", "y.md": "three"})
    stats = SourceStats()
    docs = list(iter_documents([f"{root}/x/*.txt", str(root / "y.md")], stats))
    assert [d.text for d in docs] == ["one", "two", "three"]
    assert (stats.documents, stats.files, stats.bytes) == (3, 3, len("onetwothree"))


def test_jsonl_one_document_per_line_with_custom_field(make_corpus):
    lines = [json.dumps({"body": "first", "id": 1}), "", json.dumps({"body": "sécond"})]
    root = make_corpus({"d.jsonl": "\n".join(lines) + "\n"})
    docs = list(iter_documents(str(root / "d.jsonl"), text_field="body"))
    assert [d.text for d in docs] == ["first", "sécond"]
    assert docs[1].source.endswith("d.jsonl:3")


def test_jsonl_line_without_the_field_names_file_line_and_fix(make_corpus):
    root = make_corpus({"d.jsonl": '{"text": "ok"}\n{"content": "no text field"}\n'})
    with pytest.raises(DataError) as e:
        list(iter_documents(str(root / "d.jsonl")))
    msg = str(e.value)
    assert "d.jsonl:2" in msg and "'text'" in msg and "--text-field" in msg


def test_jsonl_line_that_is_not_json(make_corpus):
    root = make_corpus({"d.jsonl": '{"text": "ok"}\n{"text": broken\n'})
    with pytest.raises(DataError, match=r"d\.jsonl:2: the line is not valid JSON"):
        list(iter_documents(str(root / "d.jsonl")))


@pytest.mark.parametrize("line, problem", [('["a"]', "not an object"), ('{"text": 3}', "not a string")])
def test_jsonl_wrong_shapes(make_corpus, line, problem):
    root = make_corpus({"d.jsonl": line + "\n"})
    with pytest.raises(DataError, match=problem):
        list(iter_documents(str(root / "d.jsonl")))


def test_non_utf8_files_are_counted_not_fatal(make_corpus):
    root = make_corpus({"good.txt": "fine", "bad.txt": "caf\xe9".encode("latin-1")})
    stats = SourceStats()
    docs = list(iter_documents(str(root), stats))
    assert [d.text for d in docs] == ["fine"]
    assert stats.non_utf8_files == [str(root / "bad.txt")]


def test_utf8_bom_is_dropped(make_corpus):
    root = make_corpus({"bom.txt": "\ufeffhi".encode("utf-8")})
    assert [d.text for d in iter_documents(str(root))] == ["hi"]


def test_empty_corpus_raises(make_corpus):
    root = make_corpus({"only.bin": b"\xff\xfe\xfa"})
    with pytest.raises(DataError, match="is empty.*1 files skipped as non-UTF-8"):
        list(iter_documents(str(root)))


def test_directory_without_matching_files(make_corpus):
    root = make_corpus({"a.txt": "x"})
    with pytest.raises(DataError, match=r"no documents found in .*no files matching '\*\.py'.*--glob"):
        list(iter_documents(str(root), glob="*.py"))


def test_missing_source_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match="does not exist.*check the path"):
        list(iter_documents(str(tmp_path / "nope")))
    with pytest.raises(DataError, match="matches no files"):
        list(iter_documents(str(tmp_path / "*.nothing")))
    with pytest.raises(DataError, match="no sources"):
        list(iter_documents([]))


def test_stdlib_source_reads_python_files():
    docs = list(itertools.islice(iter_documents(sources.STDLIB), 20))
    assert len(docs) == 20
    assert all(d.source.startswith("stdlib:") and d.source.endswith(".py") for d in docs)
    assert not any("site-packages" in d.source for d in docs)
    assert sum(len(d.text) for d in docs) > 10_000  # real modules, not empty stubs only


def test_stdlib_source_ends_with_pydoc_topics(monkeypatch):
    # Skip the 1,800 files: only the pydoc part is under test here.
    monkeypatch.setattr(sources, "stdlib_files", lambda root=None: [])
    docs = list(iter_documents(sources.STDLIB))
    from pydoc_data.topics import topics

    assert len(docs) == len(topics)
    assert {d.source for d in docs} == {f"pydoc:{k}" for k in topics}


def test_stdlib_files_exclude_third_party(tmp_path):
    for rel in ["os.py", "json/decoder.py", "site-packages/pkg/mod.py", "dist-packages/x.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    names = [p.relative_to(tmp_path).as_posix() for p in sources.stdlib_files(str(tmp_path))]
    assert names == ["json/decoder.py", "os.py"]


def test_arith_corpus():
    docs = list(iter_documents("arith"))
    assert len(docs) == 10_000 and all("=" in d.text for d in docs)
