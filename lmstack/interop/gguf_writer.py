"""Write a GGUF v3 file: header, typed metadata, tensor infos, alignment padding, tensor data.

The layout (spec: ggml-org/ggml docs/gguf.md; gguf_file.py reads the same one back), all
little-endian:

    "GGUF" | version u32 = 3 | tensor count u64 | metadata count u64
    metadata:     key (string), value type u32, value                     (repeated)
    tensor infos: name (string), n_dims u32, dims u64 x n_dims (ggml order: the row length
                  first), ggml type u32, offset u64 from the start of the data (repeated)
    zero padding up to a multiple of the alignment (general.alignment, default 32)
    tensor data, each tensor starting at a multiple of the alignment

Every metadata value carries its type, and readers check it (llama.cpp refuses a u64 where it
expects a u32), so values are built with an explicit type: `u32(8)`, `f32(1e-5)`,
`string("llama")`, `array(INT32, [1, 1, 3])`. A tensor is given by name, numpy shape, ggml type
and a function that returns its bytes, called only when that tensor is written, so a model is
quantized one tensor at a time. The file is written to a temporary name and renamed
(lmstack/atomic.py): a reader never sees half a file, and a failure leaves none.

    >>> import tempfile, numpy as np
    >>> from lmstack.interop.gguf_file import read_gguf
    >>> path = Path(tempfile.mkdtemp()) / "tiny.gguf"
    >>> data = np.arange(6, dtype="<f4").reshape(2, 3)
    >>> _ = write_gguf(path, {"general.architecture": string("demo"), "demo.n": u32(2)},
    ...                [TensorEntry("w", (2, 3), "F32", lambda: data.view(np.uint8))])
    >>> f = read_gguf(path)
    >>> f.metadata, f.tensors["w"].shape, f.raw("w").view("<f4").tolist()
    ({'general.architecture': 'demo', 'demo.n': 2}, (2, 3), [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])

Model export, which builds these entries from an lmstack model: gguf_export.py.
Tests: `pytest tests/interop/test_gguf_export.py lmstack/interop/gguf_writer.py`.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from lmstack.atomic import atomic_open
from lmstack.interop.gguf_file import ARRAY, DEFAULT_ALIGNMENT, GGML_TYPE_NAMES, MAGIC, NUMPY, SCALARS, STRING

VERSION = 3
MAX_NAME = 63  # ggml's GGML_MAX_NAME is 64 bytes including the terminating NUL
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL = range(8)  # metadata value type ids
UINT64, INT64, FLOAT64 = 10, 11, 12


@dataclass(frozen=True)
class Value:
    """One metadata value and its GGUF value type (an array also names its element type)."""

    kind: int
    value: Any
    item: int | None = None


def u32(v: int) -> Value:
    """An unsigned 32-bit integer (counts, lengths, token ids)."""
    return Value(UINT32, int(v))


def f32(v: float) -> Value:
    """A 32-bit float (epsilons, RoPE bases)."""
    return Value(FLOAT32, float(v))


def boolean(v: bool) -> Value:
    """A bool (one byte)."""
    return Value(BOOL, bool(v))


def string(v: str) -> Value:
    """A UTF-8 string."""
    return Value(STRING, str(v))


def array(item: int, values: Iterable[Any]) -> Value:
    """An array of one element type (numbers or strings)."""
    if item == ARRAY:
        raise ValueError("arrays of arrays are not written here")
    return Value(ARRAY, list(values), item)


@dataclass(frozen=True)
class TensorEntry:
    """A tensor to write: its numpy shape (rows first), ggml type, and a function giving its
    bytes (uint8, C order: each row as whole blocks of its type)."""

    name: str
    shape: tuple[int, ...]
    type_name: str
    data: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in the file."""
        t = GGML_TYPE_NAMES[self.type_name]
        return math.prod(self.shape) // t.block_size * t.block_bytes


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def encode_value(v: Value) -> bytes:
    """The bytes of a value after its type id: a scalar, a string, or an array's element type,
    count and elements.

    >>> encode_value(u32(7)).hex(), encode_value(string("hi")).hex()
    ('07000000', '02000000000000006869')
    >>> encode_value(array(INT32, [1, -1])).hex()
    '05000000020000000000000001000000ffffffff'
    """
    if v.kind in SCALARS:
        return struct.pack("<" + SCALARS[v.kind], v.value)
    if v.kind == STRING:
        return _string(v.value)
    if v.kind != ARRAY:
        raise ValueError(f"unknown GGUF value type {v.kind}")
    head = struct.pack("<IQ", v.item, len(v.value))
    if v.item in SCALARS:  # one conversion for a whole array (49k token types)
        dtype = np.dtype(NUMPY[SCALARS[v.item]]).newbyteorder("<")
        return head + np.asarray(v.value, dtype=dtype).tobytes()
    return head + b"".join(encode_value(Value(v.item, x)) for x in v.value)


def _tensor_info(entry: TensorEntry, offset: int) -> bytes:
    dims = tuple(reversed(entry.shape))  # ggml order: the fastest axis (row length) first
    return (_string(entry.name) + struct.pack("<I", len(dims))
            + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<IQ", GGML_TYPE_NAMES[entry.type_name].id, offset))


def _check(tensors: list[TensorEntry]) -> None:
    """Names unique and short enough for ggml, rows in whole blocks of their type."""
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen or len(t.name.encode()) > MAX_NAME:
            raise ValueError(f"tensor name {t.name!r} is repeated or longer than {MAX_NAME} bytes")
        seen.add(t.name)
        block = GGML_TYPE_NAMES[t.type_name].block_size
        if t.shape[-1] % block:
            raise ValueError(f"tensor {t.name!r}: rows of {t.shape[-1]} are not whole {t.type_name} blocks")


def _pad(f: IO[bytes], position: int, alignment: int) -> int:
    """Write zeros up to the next multiple of alignment; the new position."""
    n = -position % alignment
    f.write(b"\0" * n)
    return position + n


def write_gguf(path: str | os.PathLike, metadata: dict[str, Value], tensors: list[TensorEntry]) -> Path:
    """Write a GGUF v3 file atomically; tensors' bytes are computed one at a time as written."""
    _check(tensors)
    align_value = metadata.get("general.alignment")
    alignment = align_value.value if align_value is not None else DEFAULT_ALIGNMENT
    offsets, end = [], 0
    for t in tensors:  # each tensor starts on an alignment boundary of the data section
        end += -end % alignment
        offsets.append(end)
        end += t.nbytes
    path = Path(path)
    with atomic_open(path) as f:
        head = MAGIC + struct.pack("<IQQ", VERSION, len(tensors), len(metadata))
        head += b"".join(_string(k) + struct.pack("<I", v.kind) + encode_value(v)
                         for k, v in metadata.items())
        head += b"".join(_tensor_info(t, off) for t, off in zip(tensors, offsets))
        f.write(head)
        position = _pad(f, len(head), alignment)
        start = position
        for t, off in zip(tensors, offsets):
            position = _pad(f, position, alignment)
            data = np.ascontiguousarray(t.data(), dtype=np.uint8)
            if data.size != t.nbytes or position - start != off:
                raise ValueError(f"tensor {t.name!r}: {data.size} bytes, expected {t.nbytes} "
                                 f"from its shape {t.shape} and type {t.type_name}")
            f.write(data.data)
            position += data.size
    return path
