"""Our GGUF reader against the `gguf` package: metadata of every value type (a hypothesis
property over files its writer makes), tensor infos and bytes at any alignment; and the
one-line errors for files that are not GGUF, of another version, truncated or corrupt."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.interop.gguf_fixtures import Q, gguf

from lmstack.errors import ConfigError  # noqa: E402
from lmstack.interop.gguf_file import GGUFFile, is_gguf, read_gguf  # noqa: E402

T = gguf.GGUFValueType
INTS = {T.UINT8: (0, 2**8 - 1), T.INT8: (-2**7, 2**7 - 1), T.UINT16: (0, 2**16 - 1),
        T.INT16: (-2**15, 2**15 - 1), T.UINT32: (0, 2**32 - 1), T.INT32: (-2**31, 2**31 - 1),
        T.UINT64: (0, 2**64 - 1), T.INT64: (-2**63, 2**63 - 1)}
FLOATS = {T.FLOAT32: np.float32, T.FLOAT64: np.float64}


def scalar(kind) -> st.SearchStrategy:
    """Values of one GGUF scalar type, as the file will hold them."""
    if kind in INTS:
        return st.integers(*INTS[kind])
    if kind in FLOATS:
        width = 32 if kind == T.FLOAT32 else 64
        return st.floats(allow_nan=False, width=width)
    if kind == T.BOOL:
        return st.booleans()
    return st.text(max_size=12)


KINDS = [*INTS, *FLOATS, T.BOOL, T.STRING]
VALUE = st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), scalar(k), st.just(None)))
ARRAY = st.sampled_from(KINDS).flatmap(
    lambda k: st.tuples(st.just(T.ARRAY), st.lists(scalar(k), min_size=1, max_size=6), st.just(k)))


def write(path, metadata: dict, tensors: dict | None = None, alignment: int | None = None):
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    for key, (kind, value, sub) in metadata.items():
        w.add_key_value(key, value, kind, sub_type=sub)
    for name, (data, qtype) in (tensors or {}).items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text("abcdefghij._", min_size=1, max_size=10), st.one_of(VALUE, ARRAY),
                       max_size=6))
def test_metadata_of_every_type_reads_back(tmp_path_factory, metadata):
    path = write(tmp_path_factory.mktemp("g") / "m.gguf", metadata)
    got = GGUFFile(path).metadata
    assert got.pop("general.architecture") == "llama"
    assert set(got) == set(metadata)
    for key, (kind, value, sub) in metadata.items():
        if kind == T.FLOAT32 or sub == T.FLOAT32:  # stored as float32: compare after rounding
            value = np.float32(value).tolist()
        assert got[key] == value, key


@pytest.mark.parametrize("alignment", [None, 64])
def test_tensor_infos_and_bytes_match_the_gguf_reader(tmp_path, alignment):
    rng = np.random.default_rng(0)
    q4 = gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), Q.Q4_1)
    tensors = {"a": (rng.standard_normal(5).astype(np.float32), None),
               "b": (rng.standard_normal((2, 3, 8)).astype(np.float16), None),
               "c": (q4, Q.Q4_1)}
    path = write(tmp_path / "t.gguf", {}, tensors, alignment)
    ours, theirs = GGUFFile(path), gguf.GGUFReader(str(path))
    assert ours.alignment == (alignment or 32) and ours.version == 3
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert info.offset == t.data_offset and info.offset % ours.alignment == 0
        assert info.shape == tuple(reversed([int(n) for n in t.shape]))
        assert info.type.name == t.tensor_type.name
        theirs_bytes = np.asarray(t.data).view(np.uint8).reshape(-1)
        assert np.array_equal(ours.raw(t.name).reshape(-1), theirs_bytes)
    assert ours.raw("c").shape == (3, 40) and not ours.raw("c").flags.writeable  # a view of the map
    assert read_gguf(path) is read_gguf(path)  # parsed once


# ---- bad files: a tiny writer of our own, to make what gguf's writer would not ---------------

def header(version: int = 3, tensors=()) -> bytes:
    """A GGUF header without metadata: `tensors` are (name, dims, type id, offset)."""
    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), 0)
    for name, dims, kind, offset in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", kind, offset)
    return out + b"\x00" * (-len(out) % 32)


BAD = {
    "not-gguf": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
                 "is not a GGUF file: it starts with b'\\x89PNG'"),
    "empty": (b"", "is not a GGUF file: it starts with b''"),
    "v1": (header(version=1), "is GGUF version 1; lmstack reads versions 2 and 3"),
    "v9": (header(version=9), "is GGUF version 9"),
    "big-endian": (header(version=3 << 24), "is a big-endian GGUF file"),
    "cut-header": (header(tensors=[("w", (32, 2), 0, 0)])[:30],
                   "is truncated: the name of tensor 0"),
    "cut-data": (header(tensors=[("w", (32, 2), 0, 0)]) + b"\x00" * 100,
                 "is truncated: tensor 'w' ends at byte"),
    "unknown-type": (header(tensors=[("w", (32,), 99, 0)]) + b"\x00" * 128,
                     "tensor 'w' has ggml type id 99, which this lmstack does not know"),
    "bad-offset": (header(tensors=[("w", (4,), 0, 8)]) + b"\x00" * 64,
                   "not a multiple of the alignment"),
    "partial-block": (header(tensors=[("w", (40,), 8, 0)]) + b"\x00" * 128,
                      "not whole Q8_0 blocks"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_are_one_line_errors_naming_the_file(case, tmp_path):
    data, message = BAD[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        GGUFFile(path)
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_is_gguf_by_name_or_magic(tmp_path):
    (tmp_path / "a.bin").write_bytes(header())
    (tmp_path / "b.gguf").write_bytes(b"nope")
    (tmp_path / "c.bin").write_bytes(b"nope")
    assert [is_gguf(tmp_path / n) for n in ("a.bin", "b.gguf", "c.bin", "missing.gguf")] == [
        True, True, False, False]
    assert GGUFFile(tmp_path / "a.bin").tensors == {}
