"""Reading a GGUF container: the header (metadata key/values, then one entry per tensor:
name, shape, type, offset) and, on demand, a tensor's bytes.

The header is parsed here, not by `gguf.GGUFReader`. That reader trusts the counts in the
header: an array that claims 2^60 items makes it walk the file item by item. Here every
count and length is checked against the bytes left in the file *before* it is used, and
every tensor's offset + size against the file's size, so a truncated or corrupt file
fails with one line instead of a huge allocation. Arrays of arrays nest at most
`MAX_ARRAY_DEPTH` deep (deeper is a corrupt or hostile file, and would exhaust Python's
recursion limit). The file is memory-mapped; a tensor's bytes are touched only when it is
dequantized. GGUF lists shapes fastest dimension first (ggml order), so a [vocab, d]
embedding is stored as (d, vocab): shapes are reversed on reading.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quant_shape_to_byte_shape

from centelha.errors import CentelhaError
from centelha.formats.blocks import QuantizedRows
from centelha.quant import GGUF_TYPES  # the block types our quantized layers take as they are

Q = GGMLQuantizationType
READABLE_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                  Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
MAX_ARRAY_DEPTH = 8  # arrays of arrays of ...: real files nest one or two levels
COMPARE_CHUNK = 1 << 20  # bytes compared at a time when telling a tied head from its copy

STRING, ARRAY = 8, 9
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                  10: "<Q", 11: "<q", 12: "<d"}
ARRAY_DTYPES = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
                10: "<u8", 11: "<i8", 12: "<f8"}
# the fewest bytes one header entry can take: a metadata entry (key length, type, one
# byte of value), a tensor entry (name length, n_dims, type, offset), a string, an array
MIN_KV_BYTES, MIN_TENSOR_BYTES, MIN_ITEM_BYTES = 8 + 4 + 1, 8 + 4 + 4 + 8, {STRING: 8, ARRAY: 12}


@dataclass
class _TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy/torch order (slowest dimension first)
    qtype: GGMLQuantizationType
    offset: int  # absolute, in the file
    nbytes: int


def printable(text: str) -> str:
    """A key or tensor name as an error message shows it: quoted and escaped when it holds
    control characters (a newline in a corrupt name must not split the message)."""
    return text if text.isprintable() else repr(text)


class _Cursor:
    """Little-endian values read from a buffer; never reads past its end."""

    def __init__(self, buf: mmap.mmap, path: Path, pos: int = 0):
        self.buf, self.path, self.pos = buf, path, pos

    def need(self, n: int, what: str) -> None:
        left = len(self.buf) - self.pos
        if n > left:
            raise CentelhaError(f"{self.path} is truncated or corrupt: {what} needs {n} bytes "
                                f"at offset {self.pos}, the file has {left} left")

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        if fmt == "<f":  # float32 1e-5 reads as 9.99999974e-06: keep its shortest spelling
            value = float(str(np.float32(value)))
        return value

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CentelhaError(f"{self.path}: {what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        """A value of type `vtype`; `depth` counts the arrays it sits in."""
        if vtype in SCALAR_FORMATS:
            return self.scalar(SCALAR_FORMATS[vtype], what)
        if vtype == STRING:
            return self.string(what)
        if vtype == ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise CentelhaError(f"{self.path} is corrupt: {what} nests arrays more than "
                                    f"{MAX_ARRAY_DEPTH} deep (the limit)")
            item_type, count = self.scalar("<I", what), self.scalar("<Q", what)
            return self.array(item_type, count, what, depth + 1)
        raise CentelhaError(f"{self.path}: {what} has unknown value type {vtype}")

    def array(self, item_type: int, count: int, what: str, depth: int) -> Any:
        if item_type in ARRAY_DTYPES:  # numbers: one copy out of the map, no Python loop
            dtype = np.dtype(ARRAY_DTYPES[item_type])
            self.need(count * dtype.itemsize, what)
            values = np.frombuffer(self.buf, dtype, count, self.pos).copy()
            self.pos += count * dtype.itemsize
            return values
        if item_type not in MIN_ITEM_BYTES:
            raise CentelhaError(f"{self.path}: {what} has unknown item type {item_type}")
        # A lying count fails here, before the loop.
        self.need(count * MIN_ITEM_BYTES[item_type], what)
        return [self.value(item_type, what, depth) for _ in range(count)]


class GGUFFile:
    """Metadata and tensor table of a GGUF file, its data memory-mapped."""

    def __init__(self, path: Path, metadata: dict[str, Any], tensors: dict[str, _TensorInfo],
                 data: mmap.mmap):
        self.path, self.metadata, self.tensors, self.data = path, metadata, tensors, data

    def raw_rows(self, name: str) -> QuantizedRows | None:
        """A matrix's blocks, copied out of the map, when centelha can use them as they are."""
        info = self.tensors[name]
        if info.qtype.name not in GGUF_TYPES or len(info.shape) != 2:
            return None
        raw = np.frombuffer(self.data, np.uint8, info.nbytes, info.offset)
        rows = torch.from_numpy(raw.reshape(info.shape[0], -1).copy())
        return QuantizedRows(rows, info.qtype.name, info.shape)

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor dequantized to float32, in torch's shape order."""
        info = self.tensors[name]
        raw = np.frombuffer(self.data, np.uint8, info.nbytes, info.offset)
        try:
            values = dequantize(raw.reshape(quant_shape_to_byte_shape(info.shape, info.qtype)),
                                info.qtype)
        except (ValueError, NotImplementedError) as e:
            raise CentelhaError(f"{self.path}: cannot dequantize {name} ({e})") from None
        del raw
        if not values.flags.writeable:  # F32 data is a view of the (read-only) map: copy it
            values = values.copy()
        return torch.from_numpy(values.reshape(info.shape))

    def same_bytes(self, a: str, b: str) -> bool:
        """Whether two tensors hold identical data. Compared a chunk at a time in the map:
        two different matrices differ in their first chunk, so this costs about nothing
        unless the file really stores a tied head twice."""
        x, y = self.tensors[a], self.tensors[b]
        if (x.qtype, x.shape) != (y.qtype, y.shape):
            return False
        for start in range(0, x.nbytes, COMPARE_CHUNK):
            size = min(COMPARE_CHUNK, x.nbytes - start)
            if not np.array_equal(np.frombuffer(self.data, np.uint8, size, x.offset + start),
                                  np.frombuffer(self.data, np.uint8, size, y.offset + start)):
                return False
        return True

    def close(self) -> None:
        try:
            self.data.close()
        except BufferError:  # a numpy view is still alive somewhere: the GC closes it later
            pass


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse and validate a GGUF header; the tensor data stays on disk until asked for."""
    path = Path(path)
    if not path.is_file():
        raise CentelhaError(f"{path} is not a file (a GGUF model is a single .gguf file)"
                            if path.exists() else f"GGUF file not found: {path}")
    data = _mapped(path)
    try:
        return _parse(path, data)
    except BaseException:
        data.close()
        raise


def _mapped(path: Path) -> mmap.mmap:
    """The whole file, memory-mapped read-only, once its first bytes say GGUF."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise CentelhaError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise CentelhaError(f"cannot read {path}: {e.strerror or e}") from None


def _parse(path: Path, data: mmap.mmap) -> GGUFFile:
    cur = _Cursor(data, path, pos=4)
    version = cur.scalar("<I", "the version")
    if version and not version & 0xFFFF:
        raise CentelhaError(f"{path} is a big-endian GGUF file; only little-endian is supported")
    if version not in (2, 3):
        raise CentelhaError(f"{path} has GGUF version {version} (supported: 2, 3)")
    n_tensors, n_kv = cur.scalar("<Q", "the tensor count"), cur.scalar("<Q", "the key count")
    if n_tensors * MIN_TENSOR_BYTES + n_kv * MIN_KV_BYTES > len(data) - cur.pos:
        raise CentelhaError(f"{path} is corrupt: its header claims {n_tensors} tensors and "
                            f"{n_kv} metadata keys, more than its {len(data)} bytes can hold")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        if key in metadata:
            raise CentelhaError(f"{path} is corrupt: metadata key {key!r} appears twice")
        what = f"metadata {printable(key)}"
        metadata[key] = cur.value(cur.scalar("<I", what), what)
    entries = [_tensor_entry(cur) for _ in range(n_tensors)]
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CentelhaError(f"{path}: general.alignment must be a power of two, not {alignment}")
    start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, _TensorInfo] = {}
    for name, dims, type_id, offset in entries:
        if name in tensors:
            raise CentelhaError(f"{path} is corrupt: tensor {name!r} appears twice")
        tensors[name] = _tensor_info(path, name, dims, type_id, start + offset, len(data))
    return GGUFFile(path, metadata, tensors, data)


def _tensor_entry(cur: _Cursor) -> tuple[str, list[int], int, int]:
    name = cur.string("a tensor name")
    what = f"tensor {printable(name)}"
    n_dims = cur.scalar("<I", what)
    if not 1 <= n_dims <= 4:
        raise CentelhaError(f"{cur.path} is corrupt: {what} has {n_dims} dimensions")
    dims = [cur.scalar("<Q", what) for _ in range(n_dims)]
    return name, dims, cur.scalar("<I", what), cur.scalar("<Q", what)


def _tensor_info(path: Path, name: str, dims: list[int], type_id: int, offset: int,
                 file_size: int) -> _TensorInfo:
    readable = ", ".join(t.name for t in READABLE_TYPES)
    shown = printable(name)
    try:
        qtype = GGMLQuantizationType(type_id)
    except ValueError:
        raise CentelhaError(f"{path}: tensor {shown} has unknown type id {type_id} "
                            f"(supported: {readable})") from None
    if qtype not in READABLE_TYPES:
        raise CentelhaError(f"{path}: tensor {shown} is {qtype.name}, which centelha cannot "
                            f"read (supported: {readable})")
    if 0 in dims:
        raise CentelhaError(f"{path} is corrupt: tensor {shown} has a dimension of size 0")
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    if dims[0] % block:
        raise CentelhaError(f"{path} is corrupt: tensor {shown} has rows of {dims[0]} values, "
                            f"not a multiple of {qtype.name}'s block of {block}")
    nbytes = math.prod(dims) // block * block_bytes
    if offset + nbytes > file_size:
        raise CentelhaError(f"{path} is truncated or corrupt: tensor {shown} ({nbytes} bytes at "
                            f"offset {offset}) runs past the end of the file ({file_size} bytes)")
    return _TensorInfo(name, tuple(reversed(dims)), qtype, offset, nbytes)
