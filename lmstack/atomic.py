"""Atomic file writes: write to a temporary sibling, then rename over the target.

``os.replace`` within one directory is atomic on POSIX and Windows, so a reader sees either
the old file or the complete new one, never a half-written file - even if the writer is
killed mid-way (the temporary file is then left behind or removed, never mistaken for data).
This is the standard "write-then-rename" idiom (see e.g. the LWN article "Ensuring data
reaches disk", 2011).

Used by every layer (it imports nothing of lmstack). Run: ``python -m doctest -v lmstack/atomic.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary sibling `path` is written as before it is renamed into place.

    >>> name = temp_path("out/train.bin").name
    >>> name.startswith("train.bin.") and name.endswith(".tmp")
    True
    """
    path = Path(path)
    # The pid keeps two concurrent writers of the same file from sharing a temp file.
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file for writing; on success flush, fsync and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically and return the path.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write_text(p, "hi").read_text(), [x.name for x in p.parent.iterdir()]
    ('hi', ['a.txt'])
    """
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


@contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Create directory `path` (and its parents) for a job's outputs; if the job fails, remove
    the directories this call created, so a failed run leaves nothing behind. Files the job did
    finish writing are not touched: a directory that is not empty stays.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> try:
    ...     with output_dir(root / "a" / "b"):
    ...         raise ValueError("the job failed")
    ... except ValueError:
    ...     pass
    >>> list(root.iterdir())
    []
    """
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for p in created:  # deepest first
            try:
                p.rmdir()
            except OSError:  # not empty: keep it
                break
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically and return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
