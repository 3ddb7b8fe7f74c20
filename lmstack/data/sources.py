"""Where documents come from: files, directories, glob patterns and named built-in corpora.

A *document* is the unit every later stage works on (filtering, dedup, the train/val split):

* a plain file is one document;
* a ``.jsonl`` file is one document per line, the text taken from a configurable field
  (default ``"text"``), the convention of most public corpora (e.g. The Pile, Gao et al. 2020);
* a directory is every file under it (recursively) whose name matches a glob (default ``*``);
* a glob pattern (``data/**/*.md``) is every file it matches;
* a name from ``CORPORA`` is a built-in corpus. ``"stdlib"``, the default, is the running
  interpreter's standard-library ``.py`` sources plus the ``pydoc`` help topics: ~30 MB of
  code and prose that every machine with Python already has, so no download is needed.
  ``"arith"`` is 10,000 synthetic arithmetic examples (see ``synthetic.py``).

Files that are not valid UTF-8 are skipped and listed in ``SourceStats.non_utf8_files``
rather than aborting a long run; a corpus that yields no document at all raises ``DataError``.

Run it: ``python -m lmstack.data.sources [SPEC ...]`` prints document counts and sizes.
"""

from __future__ import annotations

import glob as globlib
import json
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmstack.data.document import Document
from lmstack.errors import DataError

STDLIB = "stdlib"
_GLOB_CHARS = set("*?[")
# Third-party packages live under the stdlib directory too; they are not the stdlib.
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class SourceStats:
    """Counters filled while documents are read (the reader mutates it in place)."""

    files: int = 0
    documents: int = 0
    bytes: int = 0
    non_utf8_files: list[str] = field(default_factory=list)


def iter_documents(
    spec: str | Iterable[str],
    stats: SourceStats | None = None,
    *,
    glob: str = "*",
    text_field: str = "text",
) -> Iterator[Document]:
    """Yield the documents of every source in `spec`, raising DataError if there are none."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise DataError("no sources given: pass at least one file, directory, glob or 'stdlib'")
    stats = stats if stats is not None else SourceStats()
    seen, with_text = stats.documents, 0
    for one in specs:
        for doc in _iter_one(one, stats, glob=glob, text_field=text_field):
            stats.documents += 1
            stats.bytes += len(doc.text.encode("utf-8"))
            with_text += bool(doc.text) and not doc.text.isspace()
            yield doc
    if stats.documents > seen and not with_text:  # said here, before a filter is blamed
        raise DataError(
            f"the corpus {specs!r} holds no text: its {stats.documents - seen:,} document(s) are "
            "empty or only whitespace; point --source at files with text in them (or use 'stdlib')"
        )
    if stats.documents == seen:
        skipped = f" ({len(stats.non_utf8_files)} files skipped as non-UTF-8)" if stats.non_utf8_files else ""
        raise DataError(
            f"the corpus {specs!r} is empty: it yielded no documents{skipped}; "
            "point --source at files with text in them (or use 'stdlib')"
        )


def _iter_one(spec: str, stats: SourceStats, *, glob: str, text_field: str) -> Iterator[Document]:
    """Dispatch one spec to a corpus, a file, a directory or a glob pattern."""
    if spec in CORPORA:
        yield from CORPORA[spec](stats)
        return
    path = Path(spec).expanduser()
    if path.is_file():
        yield from read_file(path, stats, text_field=text_field)
    elif path.is_dir():
        files = sorted(p for p in path.rglob(glob) if p.is_file())
        if not files:
            raise DataError(
                f"no documents found in '{spec}': the directory has no files matching {glob!r}; "
                "pass --glob or point at a file"
            )
        for file in files:
            yield from read_file(file, stats, text_field=text_field)
    elif _GLOB_CHARS & set(spec):
        files = sorted(Path(p) for p in globlib.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"the glob pattern '{spec}' matches no files; check the pattern and the directory")
        for file in files:
            yield from read_file(file, stats, text_field=text_field)
    else:
        raise DataError(
            f"source '{spec}' does not exist: it is not a file, a directory, a glob pattern or one of "
            f"the built-in corpora {sorted(CORPORA)}; check the path"
        )


def read_file(path: Path, stats: SourceStats, *, text_field: str = "text") -> Iterator[Document]:
    """Yield the documents of one file, choosing the reader by file suffix."""
    stats.files += 1
    reader = FILE_READERS.get(path.suffix.lower(), _read_whole_file)
    yield from reader(path, stats, text_field)


def _read_whole_file(path: Path, stats: SourceStats, text_field: str) -> Iterator[Document]:
    """A whole file is one document."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        stats.non_utf8_files.append(str(path))
        return
    yield Document(text.removeprefix("\ufeff"), str(path))


def _read_jsonl(path: Path, stats: SourceStats, text_field: str) -> Iterator[Document]:
    """Every non-blank line of a .jsonl file is one JSON object holding one document."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                # Record the file once, but keep its valid lines.
                if not stats.non_utf8_files or stats.non_utf8_files[-1] != str(path):
                    stats.non_utf8_files.append(str(path))
                continue
            if not line.strip():
                continue
            yield Document(parse_jsonl_line(line, text_field, where=f"{path}:{lineno}"), f"{path}:{lineno}")


def parse_jsonl_line(line: str, text_field: str = "text", where: str = "<line>") -> str:
    """Return the text field of one JSONL line, raising DataError naming `where` if it has none.

    >>> parse_jsonl_line('{"text": "hello", "id": 3}')
    'hello'
    >>> parse_jsonl_line('{"body": "hi"}', text_field="body")
    'hi'
    >>> parse_jsonl_line('{"body": "hi"}', where="a.jsonl:7")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lmstack.errors.DataError: a.jsonl:7: the JSON object has no 'text' field (its fields: ['body']); ...
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{where}: the line is not valid JSON ({e.msg} at column {e.colno}); "
            "every line of a .jsonl file must be one JSON object: fix or delete the line"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{where}: the line is JSON {type(obj).__name__}, not an object; "
            f'write each document as {{"{text_field}": "..."}}'
        )
    if text_field not in obj:
        raise DataError(
            f"{where}: the JSON object has no {text_field!r} field (its fields: {sorted(obj)}); "
            "pass --text-field with the name of the field that holds the text"
        )
    text = obj[text_field]
    if not isinstance(text, str):
        raise DataError(
            f"{where}: the {text_field!r} field is {type(text).__name__}, not a string; "
            "store the document text as a JSON string"
        )
    return text


def stdlib_files(root: str | None = None) -> list[Path]:
    """List the standard library's .py files in a stable (sorted) order, without site-packages."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    return sorted(
        p for p in base.rglob("*.py") if p.is_file() and not _EXCLUDED_DIRS & set(p.relative_to(base).parts)
    )


def iter_stdlib(stats: SourceStats) -> Iterator[Document]:
    """Yield the interpreter's stdlib sources, one per file, then one document per pydoc topic."""
    base = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files(str(base)):
        stats.files += 1
        for doc in _read_whole_file(path, stats, ""):
            yield Document(doc.text, f"stdlib:{path.relative_to(base).as_posix()}")
    try:
        from pydoc_data.topics import topics
    except ImportError:  # Some distributions strip pydoc_data; the code alone is still a corpus.
        return
    for name in sorted(topics):
        yield Document(topics[name], f"pydoc:{name}")


def iter_arith(stats: SourceStats) -> Iterator[Document]:
    """Yield the default synthetic arithmetic corpus (10,000 examples, seed 0)."""
    from lmstack.data.synthetic import ArithmeticConfig, iter_examples

    yield from iter_examples(ArithmeticConfig(n=10_000, seed=0))


# Built-in corpora by name; each takes the stats object so it can count files it skips.
CORPORA: dict[str, Callable[[SourceStats], Iterator[Document]]] = {
    STDLIB: iter_stdlib,
    "arith": iter_arith,
}

# Readers by lower-case file suffix; anything else is read as one whole document.
FILE_READERS: dict[str, Callable[[Path, SourceStats, str], Iterator[Document]]] = {
    ".jsonl": _read_jsonl,
}


def main(argv: list[str] | None = None) -> None:
    """Print how many documents and bytes the given sources hold."""
    specs = (argv if argv is not None else sys.argv[1:]) or [STDLIB]
    stats = SourceStats()
    for _ in iter_documents(specs, stats):
        pass
    print(f"{stats.documents} documents, {stats.bytes / 1e6:.1f} MB from {stats.files} files")
    if stats.non_utf8_files:
        print(f"{len(stats.non_utf8_files)} non-UTF-8 files skipped, e.g. {stats.non_utf8_files[0]}")


if __name__ == "__main__":
    main()
