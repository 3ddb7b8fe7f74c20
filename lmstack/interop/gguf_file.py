"""Read a GGUF file: header, metadata, tensor infos, and the tensor bytes, memory-mapped.

GGUF is llama.cpp's single-file model format (spec: ggml-org/ggml, docs/gguf.md). All numbers
are little-endian:

    magic "GGUF" | version u32 (2 or 3) | tensor count u64 | metadata count u64
    metadata:     key (string), value type u32, value         (repeated)
    tensor infos: name (string), n_dims u32, dims u64 x n_dims, ggml type u32, offset u64
    padding to `general.alignment` (default 32), then the tensor data; each tensor starts at
    data start + offset, a multiple of the alignment

A string is a u64 byte length and UTF-8 bytes; an array is an element type u32, a u64 count and
the elements. Dims are ggml's `ne`, fastest-varying first, so a matrix of `rows` x `cols` is
stored as dims (cols, rows): `TensorInfo.shape` gives the numpy order (rows, cols). Quantized
types store each row as whole blocks (gguf_dequant.py turns them into floats).

Nothing is copied on open: `GGUFFile.raw(name)` is a read-only numpy view of the memory-mapped
file. Bad input is a one-line `ConfigError` naming the file (not GGUF, a version we do not
read, truncated header or data, an unknown type id).

    python -c "from lmstack.interop.gguf_file import read_gguf; print(read_gguf('m.gguf'))"

Tests: `pytest tests/interop/test_gguf_file.py`.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lmstack.errors import ConfigError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 counted with u32 and is long gone
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type: its id in the file, name, and block (elements, bytes)."""

    id: int
    name: str
    block_size: int   # elements per block (1 for plain floats/ints)
    block_bytes: int  # bytes per block


# Every type ggml defines (ggml.h `ggml_type`), so that one we cannot decode is named, not numbered.
GGML_TYPES: dict[int, GGMLType] = {t.id: t for t in (
    GGMLType(0, "F32", 1, 4), GGMLType(1, "F16", 1, 2),
    GGMLType(2, "Q4_0", 32, 18), GGMLType(3, "Q4_1", 32, 20),
    GGMLType(6, "Q5_0", 32, 22), GGMLType(7, "Q5_1", 32, 24),
    GGMLType(8, "Q8_0", 32, 34), GGMLType(9, "Q8_1", 32, 36),
    GGMLType(10, "Q2_K", 256, 84), GGMLType(11, "Q3_K", 256, 110),
    GGMLType(12, "Q4_K", 256, 144), GGMLType(13, "Q5_K", 256, 176),
    GGMLType(14, "Q6_K", 256, 210), GGMLType(15, "Q8_K", 256, 292),
    GGMLType(16, "IQ2_XXS", 256, 66), GGMLType(17, "IQ2_XS", 256, 74),
    GGMLType(18, "IQ3_XXS", 256, 98), GGMLType(19, "IQ1_S", 256, 50),
    GGMLType(20, "IQ4_NL", 32, 18), GGMLType(21, "IQ3_S", 256, 110),
    GGMLType(22, "IQ2_S", 256, 82), GGMLType(23, "IQ4_XS", 256, 136),
    GGMLType(24, "I8", 1, 1), GGMLType(25, "I16", 1, 2), GGMLType(26, "I32", 1, 4),
    GGMLType(27, "I64", 1, 8), GGMLType(28, "F64", 1, 8), GGMLType(29, "IQ1_M", 256, 56),
    GGMLType(30, "BF16", 1, 2), GGMLType(34, "TQ1_0", 256, 54), GGMLType(35, "TQ2_0", 256, 66),
    GGMLType(39, "MXFP4", 32, 17), GGMLType(40, "NVFP4", 64, 36), GGMLType(41, "Q1_0", 128, 18),
)}
GGML_TYPE_NAMES = {t.name: t for t in GGML_TYPES.values()}

# Metadata value types: id -> struct format of a scalar (8: string, 9: array are read apart).
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
STRING, ARRAY = 8, 9
NUMPY = {"B": np.uint8, "b": np.int8, "H": np.uint16, "h": np.int16, "I": np.uint32, "i": np.int32,
         "f": np.float32, "?": np.bool_, "Q": np.uint64, "q": np.int64, "d": np.float64}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in the file, and how it is stored."""

    name: str
    shape: tuple[int, ...]  # numpy order: rows first (ggml's dims reversed)
    type: GGMLType
    offset: int             # absolute byte offset in the file
    nbytes: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (the last, fastest axis), whole blocks."""
        return self.shape[-1] // self.type.block_size * self.type.block_bytes


class _Cursor:
    """Reads little-endian values from a buffer, refusing to run past its end."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> int:
        """Advance over n bytes; the position they start at."""
        if self.pos + n > len(self.buf):
            raise ConfigError(f"{self.path} is truncated: {what} runs past the end of the file "
                              f"({len(self.buf)} bytes); download or copy it again")
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack_from("<" + fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("Q", what)
        start = self.take(n, what)
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{self.path}: {what} is not valid UTF-8 ({e}); the file is "
                              "corrupt") from None

    def value(self, kind: int, what: str) -> Any:
        """One metadata value of type `kind`, as a plain Python value (arrays as lists)."""
        if kind in SCALARS:
            return self.scalar(SCALARS[kind], what)
        if kind == STRING:
            return self.string(what)
        if kind == ARRAY:
            item, count = self.scalar("I", what), self.scalar("Q", what)
            if item in SCALARS:  # numbers in one read: the 49k token types of a vocabulary
                fmt = SCALARS[item]
                start = self.take(count * struct.calcsize(fmt), what)
                return np.frombuffer(self.buf, NUMPY[fmt], count, start).tolist()
            return [self.value(item, what) for _ in range(count)]
        raise ConfigError(f"{self.path}: {what} has value type {kind}, which GGUF does not define "
                          "(known 0..12); the file is corrupt or from a newer GGUF version")


class GGUFFile:
    """An open GGUF file: `version`, `metadata` (full keys -> plain Python values), `tensors`
    (name -> TensorInfo, in file order), `alignment`; `raw(name)` gives a tensor's bytes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._map = _map_file(self.path)
        cur = _Cursor(memoryview(self._map), self.path)
        self.version = _read_version(cur)
        n_tensors, n_kv = cur.scalar("Q", "the header"), cur.scalar("Q", "the header")
        self.metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}")
            what = f"metadata {key!r}"
            self.metadata[key] = cur.value(cur.scalar("I", what), what)
        self.alignment = self._alignment()
        infos = [_read_tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment  # padded up
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, kind, offset in infos:
            self.tensors[name] = self._tensor_info(name, shape, kind, offset)

    def _alignment(self) -> int:
        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or isinstance(align, bool) or align < 1 or align % 8:
            raise ConfigError(f"{self.path}: general.alignment {align!r} is not a positive "
                              "multiple of 8; the file is corrupt")
        return align

    def _tensor_info(self, name: str, shape: tuple[int, ...], kind: int, offset: int) -> TensorInfo:
        """Check one tensor's type, shape and extent against the file."""
        if name in self.tensors:
            raise ConfigError(f"{self.path}: tensor {name!r} is listed twice; the file is corrupt")
        if kind not in GGML_TYPES:
            raise ConfigError(f"{self.path}: tensor {name!r} has ggml type id {kind}, which this "
                              f"lmstack does not know (known: {sorted(GGML_TYPES)}); re-quantize "
                              "it to a common type such as Q8_0 or Q4_K")
        gtype = GGML_TYPES[kind]
        if shape and shape[-1] % gtype.block_size:
            raise ConfigError(f"{self.path}: tensor {name!r} has rows of {shape[-1]} elements, "
                              f"not whole {gtype.name} blocks of {gtype.block_size}; the file is "
                              "corrupt")
        if offset % self.alignment:
            raise ConfigError(f"{self.path}: tensor {name!r} starts at offset {offset}, not a "
                              f"multiple of the alignment {self.alignment}; the file is corrupt")
        nbytes = math.prod(shape) // gtype.block_size * gtype.block_bytes
        start = self.data_offset + offset
        if start + nbytes > len(self._map):
            raise ConfigError(f"{self.path} is truncated: tensor {name!r} ends at byte "
                              f"{start + nbytes} but the file has {len(self._map)}; download or "
                              "copy it again")
        return TensorInfo(name, shape, gtype, start, nbytes)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of a tensor, (*shape[:-1], row_bytes) uint8, a read-only view."""
        info = self.tensors[name]
        flat = np.frombuffer(self._map, np.uint8, info.nbytes, info.offset)
        return flat.reshape(*info.shape[:-1], info.row_bytes)

    def __repr__(self) -> str:
        arch = self.metadata.get("general.architecture")
        return (f"GGUFFile({str(self.path)!r}, version={self.version}, architecture={arch!r}, "
                f"{len(self.metadata)} metadata keys, {len(self.tensors)} tensors)")


def _map_file(path: Path) -> np.memmap | bytes:
    """The whole file, memory-mapped read-only (an empty file cannot be mapped: b"")."""
    try:
        if path.stat().st_size == 0:
            return b""
        return np.memmap(path, dtype=np.uint8, mode="r")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; give the path of a .gguf file") from None
    except (IsADirectoryError, PermissionError, OSError) as e:
        raise ConfigError(f"{path} cannot be read as a file ({e.strerror or e})") from None


def _read_version(cur: _Cursor) -> int:
    """Check the magic and the version; the version."""
    head = bytes(cur.buf[:4])
    if head != MAGIC:
        raise ConfigError(f"{cur.path} is not a GGUF file: it starts with {head!r}, not b'GGUF'; "
                          "give a .gguf file (or a model directory)")
    cur.take(4, "the magic")
    version = cur.scalar("I", "the header")
    if version not in VERSIONS and version >> 24 in VERSIONS and not version & 0xFFFFFF:  # BE
        raise ConfigError(f"{cur.path} is a big-endian GGUF file; lmstack reads little-endian "
                          "ones (convert it again on a little-endian machine)")
    if version not in VERSIONS:
        raise ConfigError(f"{cur.path} is GGUF version {version}; lmstack reads versions "
                          f"{' and '.join(map(str, VERSIONS))} (convert it again with a recent "
                          "llama.cpp)")
    return version


def _read_tensor_info(cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
    """(name, numpy shape, ggml type id, offset from the data start) of tensor info i."""
    name = cur.string(f"the name of tensor {i}")
    what = f"the info of tensor {name!r}"
    n_dims = cur.scalar("I", what)
    if n_dims > 8:  # ggml has at most 4; more means the bytes are not a tensor info at all
        raise ConfigError(f"{cur.path}: tensor {name!r} claims {n_dims} dimensions; the file is "
                          "corrupt")
    dims = [cur.scalar("Q", what) for _ in range(n_dims)]
    return name, tuple(reversed(dims)), cur.scalar("I", what), cur.scalar("Q", what)


@lru_cache(maxsize=4)
def _cached(path: str, mtime_ns: int, size: int) -> GGUFFile:
    return GGUFFile(path)


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open a GGUF file (parsed once per version of the file, then shared: read-only)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return GGUFFile(p)  # raises the one-line error
    return _cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether a path is a file named *.gguf or starting with the GGUF magic."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() == ".gguf":
        return True
    try:
        with open(p, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False
