"""Output paths, checked before the work: a command that could not write its result, or would
overwrite what is not its own earlier output, says so before it reads a byte.

An output directory may be new (its parents are made), empty, or an earlier output of the same
command (it holds one of `markers`: a shard directory's manifest.json, a run's train_state.pt);
entries that are the command's own inputs (a tokenizer kept inside the directory) do not count.
The directory itself is made only when the work starts, so a refused command leaves nothing.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> check_out_dir(d / "new", "--out", "a shard directory", ["manifest.json"]).name
    'new'
    >>> _ = (d / "notes.txt").write_text("mine")
    >>> check_out_dir(d, "--out", "a shard directory", ["manifest.json"])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: --out ... is not empty and is not a shard directory (it holds notes.txt, and no manifest.json)...
    >>> check_out_file(d / "notes.txt", "--out", "a tokenizer file", lambda p: False)
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: --out .../notes.txt exists and is not a tokenizer file; ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from lmstack.errors import ConfigError


def _check_creatable(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` must be a directory this process can write."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {path} cannot be created: {ancestor} is a file; "
                          "give a path under a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path} cannot be created: {ancestor} is not writable; "
                          "give a path you can write to")


def check_out_dir(path: str | os.PathLike, flag: str, what: str, markers: Iterable[str],
                  inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """`path`, if it can be this command's output directory (see the module doc); else a
    ConfigError naming what is in the way. Creates nothing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is a file, not a directory; give a directory path "
                          "(a new one is made)")
    if not p.exists():
        _check_creatable(p, flag)
        return p
    markers = list(markers)
    if any((p / m).exists() for m in markers):
        return p  # an earlier output of this command: it is updated in place
    own = {Path(i).resolve() for i in inputs}
    foreign = sorted(e.name for e in p.iterdir() if e.resolve() not in own)
    if foreign:
        more = len(foreign) - 3
        shown = ", ".join(foreign[:3]) + (f" and {more} more" if more > 0 else "")
        raise ConfigError(f"{flag} {p} is not empty and is not {what} (it holds {shown}, and no "
                          f"{' or '.join(markers)}); give a new or empty directory, or delete it")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {p} is not writable; give a directory you can write to")
    return p


def check_out_file(path: str | os.PathLike, flag: str, what: str,
                   is_ours: Callable[[Path], bool]) -> Path:
    """`path`, if this command can write its file there: new, or an earlier output that
    `is_ours` recognizes (it is replaced); else a ConfigError. Creates nothing."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p} is a directory; give a file path, "
                          f"e.g. {p / 'tokenizer.json'}")
    if p.exists():
        if not is_ours(p):
            raise ConfigError(f"{flag} {p} exists and is not {what}; give another path, or "
                              "delete the file first")
        if not os.access(p, os.W_OK) or not os.access(p.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {p} is not writable; give a path you can write to")
        return p
    _check_creatable(p, flag)
    return p
