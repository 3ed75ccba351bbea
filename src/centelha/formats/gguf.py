"""GGUF files (llama.cpp, Ollama, LM Studio): import `llama`, `qwen2`, `qwen3` and `gpt2`
models, export centelha models that llama.cpp can run.

A GGUF file is a header (metadata key/values, then one entry per tensor: name, shape,
type, offset) followed by the tensor data. Design choices a reader should know:

- The header is parsed here, not by `gguf.GGUFReader`. That reader trusts the counts in
  the header: an array that claims 2^60 items makes it walk the file item by item. Here
  every count and length is checked against the bytes left in the file *before* it is
  used, and every tensor's offset + size is checked against the file's size, so a
  truncated or corrupt file fails with one line instead of a huge allocation. Arrays of
  arrays nest at most `MAX_ARRAY_DEPTH` deep (deeper is a corrupt or hostile file, and
  would exhaust Python's recursion limit). The file is memory-mapped; a tensor's bytes
  are touched only when it is dequantized.
- `read_gguf_shapes` is `load_gguf` without the data: the same config and the same
  shape checks, every tensor a meta tensor (the model card is made from it).
- Dequantization is `gguf.quants.dequantize`, the numpy code the llama.cpp project keeps
  in step with ggml. GGUF lists shapes fastest-dimension first (ggml order), so a
  [vocab, d] embedding is stored as (d, vocab): shapes are reversed on reading.
- Rotary layout. centelha (like Hugging Face) rotates channel i of a head with channel
  i + head_dim/2 ("rotate half"). llama.cpp's converter permutes the rows of Q and K of
  `llama` models so that each rotated pair is adjacent, for its "normal" rope. Import
  undoes that permutation, export applies it. `qwen2`/`qwen3` files keep the Hugging Face
  layout (llama.cpp runs them with its "neox" rope), so nothing is permuted there.
- GGUF stores q, k and v (and gate and up) as separate matrices; centelha fuses them
  into `attn.qkv` (and `mlp.fc_in`, gate rows first). `gpt2` files already fuse q/k/v.
- The tokenizer is rebuilt as a Hugging Face `tokenizers` object from `tokenizer.ggml.*`:
  byte-level BPE (`gpt2` model) from tokens + merges, with the pre-tokenizer regex the
  original tokenizer of that family used (named by `tokenizer.ggml.pre`); SentencePiece
  (`llama` model) as a byte-fallback BPE whose merges come from the token scores, as
  Hugging Face converts SentencePiece models. Control and user-defined tokens become
  special tokens; the chat template and BOS/EOS go to the tokenizer's config.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import (
    GGML_QUANT_SIZES,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    RopeScalingType,
    TokenType,
)
from gguf.quants import dequantize, quant_shape_to_byte_shape, quantize
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer

__all__ = ["load_gguf", "read_gguf_shapes", "save_gguf"]

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gpt2")
PERMUTED_ARCHITECTURES = ("llama",)  # Q/K rows interleaved by llama.cpp's converter
Q = GGMLQuantizationType
READABLE_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                  Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
EXPORT_FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                     "q8_0": LlamaFileType.MOSTLY_Q8_0}
MAX_CONTEXT = 1 << 24  # a context_length above 16M positions is a corrupt header
MAX_MERGE_TOKEN = 128  # SentencePiece pieces longer than this take part in no merge
# stop ids beyond llama.cpp's eos/eot/eom keys, in a key of our own that llama.cpp ignores
STOP_IDS_KEY = "centelha.stop_token_ids"
MAX_ARRAY_DEPTH = 8  # arrays of arrays of ...: real files nest one or two levels
COMPARE_CHUNK = 1 << 20  # bytes compared at a time when telling a tied head from its copy

# ------------------------------------------------------------------------------------------
# Reading the container
# ------------------------------------------------------------------------------------------
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


@dataclass
class QuantizedRows:
    """A weight matrix kept in its GGUF blocks: `rows` is uint8 (N, bytes per row), so
    row permutations and concatenations apply to it as to a float matrix."""
    rows: torch.Tensor
    ggml_type: str
    shape: tuple[int, int]  # (N, K) of the float matrix


# Block types that centelha's quantized layers take as they are (see quant.py).
NATIVE_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K")


def _cat(parts: list) -> torch.Tensor | QuantizedRows:
    """Stack matrices by rows; blocks stay blocks when all parts share a block type."""
    if all(isinstance(p, QuantizedRows) for p in parts) and \
            len({p.ggml_type for p in parts}) == 1:
        rows = torch.cat([p.rows for p in parts])
        return QuantizedRows(rows, parts[0].ggml_type,
                             (sum(p.shape[0] for p in parts), parts[0].shape[1]))
    return torch.cat([_dense(p) for p in parts])


def _dense(value: torch.Tensor | QuantizedRows) -> torch.Tensor:
    if not isinstance(value, QuantizedRows):
        return value
    from gguf.quants import dequantize as dequantize_blocks

    qtype = GGMLQuantizationType[value.ggml_type]
    values = dequantize_blocks(value.rows.numpy(), qtype)
    return torch.from_numpy(np.ascontiguousarray(values)).reshape(value.shape)


def _shown(text: str) -> str:
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


class _GGUFFile:
    """Metadata and tensor table of a GGUF file, its data memory-mapped."""

    def __init__(self, path: Path, metadata: dict[str, Any], tensors: dict[str, _TensorInfo],
                 data: mmap.mmap):
        self.path, self.metadata, self.tensors, self.data = path, metadata, tensors, data

    def raw_rows(self, name: str) -> QuantizedRows | None:
        """A matrix's blocks, copied out of the map, when centelha can use them as they are."""
        info = self.tensors[name]
        if info.qtype.name not in NATIVE_TYPES or len(info.shape) != 2:
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


def _read_gguf(path: str | Path) -> _GGUFFile:
    """Parse and validate a GGUF header; the tensor data stays on disk until asked for."""
    path = Path(path)
    if not path.exists():
        raise CentelhaError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise CentelhaError(f"{path} is not a file (a GGUF model is a single .gguf file)")
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise CentelhaError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise CentelhaError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return _parse(path, data)
    except BaseException:
        data.close()
        raise


def _parse(path: Path, data: mmap.mmap) -> _GGUFFile:
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
        what = f"metadata {_shown(key)}"
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
    return _GGUFFile(path, metadata, tensors, data)


def _tensor_entry(cur: _Cursor) -> tuple[str, list[int], int, int]:
    name = cur.string("a tensor name")
    what = f"tensor {_shown(name)}"
    n_dims = cur.scalar("<I", what)
    if not 1 <= n_dims <= 4:
        raise CentelhaError(f"{cur.path} is corrupt: {what} has {n_dims} dimensions")
    dims = [cur.scalar("<Q", what) for _ in range(n_dims)]
    return name, dims, cur.scalar("<I", what), cur.scalar("<Q", what)


def _tensor_info(path: Path, name: str, dims: list[int], type_id: int, offset: int,
                 file_size: int) -> _TensorInfo:
    readable = ", ".join(t.name for t in READABLE_TYPES)
    shown = _shown(name)
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


# ------------------------------------------------------------------------------------------
# Import: metadata -> ModelConfig
# ------------------------------------------------------------------------------------------
_MISSING = object()


def _meta(gguf: _GGUFFile, key: str, kind: type, default: Any = _MISSING) -> Any:
    """A metadata value of the expected kind (int, float, str or bool)."""
    if key not in gguf.metadata:
        if default is _MISSING:
            raise CentelhaError(f"{gguf.path} lacks the metadata key {key}")
        return default
    value = gguf.metadata[key]
    if isinstance(value, np.ndarray) and kind in (int, float):
        # some files give per-layer values; centelha has one value for every layer
        if value.size == 0 or not (value == value.flat[0]).all():
            raise CentelhaError(f"{gguf.path}: {key} differs between layers, which centelha "
                                "does not support")
        value = value.flat[0].item()
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str), bool: isinstance(value, (bool, int))}[kind]
    if not ok:
        raise CentelhaError(f"{gguf.path}: {key} should be {kind.__name__}, not {value!r}")
    return kind(value)


def _config(gguf: _GGUFFile) -> ModelConfig:
    arch = _meta(gguf, "general.architecture", str)
    if arch not in ARCHITECTURES:
        raise CentelhaError(f"{gguf.path}: architecture {arch!r} is not supported "
                            f"(supported: {', '.join(ARCHITECTURES)})")
    if "token_embd.weight" not in gguf.tensors:
        raise CentelhaError(f"{gguf.path} lacks the tensor token_embd.weight")
    if len(gguf.tensors["token_embd.weight"].shape) != 2:
        raise CentelhaError(f"{gguf.path}: token_embd.weight is not a matrix (shape "
                            f"{gguf.tensors['token_embd.weight'].shape})")
    vocab_size, d_model = gguf.tensors["token_embd.weight"].shape

    def get(key, kind=int, default=_MISSING):
        return _meta(gguf, f"{arch}.{key}", kind, default)

    n_head = get("attention.head_count")
    block_size = get("context_length")
    if not 0 < block_size <= MAX_CONTEXT:
        raise CentelhaError(f"{gguf.path}: context_length {block_size} is implausible")
    values: dict[str, Any] = dict(
        vocab_size=vocab_size, block_size=block_size, n_layer=get("block_count"),
        n_head=n_head, n_kv_head=get("attention.head_count_kv", int, n_head),
        d_model=get("embedding_length"), d_ff=get("feed_forward_length"),
        tie_embeddings="output.weight" not in gguf.tensors
        or gguf.same_bytes("output.weight", "token_embd.weight"),
        extra={"gguf_architecture": arch, "gguf_file_type": _file_type(gguf)},
    )
    if values["d_model"] != d_model:
        raise CentelhaError(f"{gguf.path}: embedding_length {values['d_model']} does not match "
                            f"token_embd.weight ({d_model} columns)")
    if arch == "gpt2":
        values.update(family="gpt2", norm_eps=get("attention.layer_norm_epsilon", float))
    else:
        values.update(_llama_like_values(gguf, arch, get))
    try:
        return ModelConfig.from_dict(values)
    except CentelhaError as e:
        raise CentelhaError(f"{gguf.path}: {e}") from None


def _llama_like_values(gguf: _GGUFFile, arch: str, get) -> dict[str, Any]:
    n_head, d_model = get("attention.head_count"), get("embedding_length")
    head_dim = get("attention.key_length", int, d_model // max(n_head, 1))
    if get("attention.value_length", int, head_dim) != head_dim:
        raise CentelhaError(f"{gguf.path}: keys and values of different widths are not supported")
    rope_dim = get("rope.dimension_count", int, head_dim)
    if rope_dim != head_dim:
        raise CentelhaError(f"{gguf.path}: partial rotary embeddings (rope.dimension_count "
                            f"{rope_dim} of head_dim {head_dim}) are not supported")
    theta = get("rope.freq_base", float, 10000.0)
    return dict(
        family="llama", head_dim=head_dim, rope_theta=theta,
        norm_eps=get("attention.layer_norm_rms_epsilon", float,
                     get("attention.layer_norm_epsilon", float, 1e-5)),
        rope_scaling=_rope_scaling(gguf, arch, theta, head_dim),
        qkv_bias="blk.0.attn_q.bias" in gguf.tensors,
        qk_norm="blk.0.attn_q_norm.weight" in gguf.tensors,
    )


def _file_type(gguf: _GGUFFile) -> str:
    """"Q4_1", "F16"…: the file's declared type, or its weights' most common one."""
    try:
        name = LlamaFileType(gguf.metadata["general.file_type"]).name
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (KeyError, ValueError, TypeError):
        kinds = [t.qtype.name for t in gguf.tensors.values() if len(t.shape) == 2]
        return max(set(kinds), key=kinds.count) if kinds else "unknown"


# -- rope scaling ------------------------------------------------------------------------------
def _rope_scaling(gguf: _GGUFFile, arch: str, theta: float, head_dim: int) -> dict | None:
    """Llama 3's scaling is stored as a tensor of per-frequency divisors (`rope_freqs`);
    linear scaling as metadata."""
    if "rope_freqs.weight" in gguf.tensors:
        if gguf.tensors["rope_freqs.weight"].shape != (head_dim // 2,):
            raise CentelhaError(f"{gguf.path}: rope_freqs.weight has shape "
                                f"{gguf.tensors['rope_freqs.weight'].shape}, expected "
                                f"({head_dim // 2},)")
        factors = gguf.tensor("rope_freqs.weight").double().numpy()
        return _llama3_scaling_from_factors(factors, theta, head_dim, gguf.path)
    kind = _meta(gguf, f"{arch}.rope.scaling.type", str, "none")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear",
                "factor": _meta(gguf, f"{arch}.rope.scaling.factor", float)}
    raise CentelhaError(f"{gguf.path}: rope scaling {kind!r} is not supported "
                        "(supported: none, linear, Llama 3's rope_freqs)")


def _llama3_factors(scaling: dict, theta: float, head_dim: int) -> np.ndarray:
    """Llama 3.1's divisor for each rotary frequency (what llama.cpp's `rope_freqs` holds)."""
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    original = scaling.get("original_max_position_embeddings", 8192)
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * math.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelength < original / high, 1.0,
                    np.where(wavelength > original / low, factor, blended))


def _llama3_scaling_from_factors(factors: np.ndarray, theta: float, head_dim: int,
                                 path: Path) -> dict | None:
    """Recover Hugging Face's llama3 rope_scaling from the per-frequency divisors.

    In the blended band, smooth = (1/f - 1/factor) / (1 - 1/factor) is linear in
    1/wavelength: smooth = a/wavelength - b, with a = original/(high - low) and
    b = low/(high - low). Only a and b are determined, so low = 1 (every Llama 3 uses it)
    fixes the rest; a band of fewer than two values falls back to Llama 3's high = 4.
    """
    factor = float(factors.max())
    if factor <= 1.0 + 1e-6:
        return None
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * math.pi / inv_freq
    band = (factors > 1 + 1e-4) & (factors < factor * (1 - 1e-4))
    smooth = (1 / factors[band] - 1 / factor) / (1 - 1 / factor)
    low, high, original = 1.0, 4.0, 8192.0
    if band.sum() >= 2:
        a, minus_b = np.polyfit(1 / wavelength[band], smooth, 1)
        if minus_b < 0:
            high, original = 1 - 1 / minus_b, -a / minus_b
    elif band.sum() == 1:
        original = wavelength[band][0] * (low + (high - low) * smooth[0])
    scaling = {"rope_type": "llama3", "factor": round(factor, 6), "low_freq_factor": low,
               "high_freq_factor": round(float(high), 4),
               "original_max_position_embeddings": int(round(float(original)))}
    if not np.allclose(_llama3_factors(scaling, theta, head_dim), factors, rtol=1e-3):
        raise CentelhaError(f"{path}: rope_freqs.weight does not follow Llama 3's rope "
                            "scaling, the only frequency table centelha supports")
    return scaling


# ------------------------------------------------------------------------------------------
# Import: tensors -> centelha names
# ------------------------------------------------------------------------------------------
def _rotate_half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head [x0 … x_{h/2-1}, y0 … y_{h/2-1}] -> [x0, y0, x1, y1, …]."""
    return w.reshape(n_heads, 2, -1, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _interleaved_to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse: [x0, y0, x1, y1, …] -> [x0 … x_{h/2-1}, y0 … y_{h/2-1}]."""
    return w.reshape(n_heads, -1, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _unpermute(w: torch.Tensor | QuantizedRows, n_heads: int) -> torch.Tensor | QuantizedRows:
    """Undo the converter's Q/K row order; on blocks, whole rows move (blocks run along K)."""
    if isinstance(w, QuantizedRows):
        return QuantizedRows(_interleaved_to_rotate_half(w.rows, n_heads), w.ggml_type, w.shape)
    return _interleaved_to_rotate_half(w, n_heads)


class _Taker:
    """Dequantizes tensors by GGUF name, after checking the shape the config implies
    (before any data is read), and remembers which tensors were used. With `shapes_only`
    it hands out meta tensors: the same checks, no data read."""

    def __init__(self, gguf: _GGUFFile, arch: str, keep_quantized: bool = False,
                 shapes_only: bool = False):
        self.gguf, self.arch, self.used = gguf, arch, {"rope_freqs.weight"}
        self.keep_quantized, self.shapes_only = keep_quantized, shapes_only

    def __call__(self, name: str, *shape: int) -> torch.Tensor:
        info = self.gguf.tensors.get(name)
        if info is None:
            raise CentelhaError(f"{self.gguf.path} lacks the tensor {name} (needed by a "
                                f"{self.arch} model)")
        if info.shape != shape:
            raise CentelhaError(f"{self.gguf.path}: tensor {name} has shape {info.shape}, the "
                                f"metadata implies {shape}")
        self.used.add(name)
        if self.shapes_only:
            return torch.empty(shape, device="meta")
        if self.keep_quantized and name != "token_embd.weight":  # embeddings are looked up
            raw = self.gguf.raw_rows(name)
            if raw is not None:
                return raw
        return self.gguf.tensor(name)


def _tensors(gguf: _GGUFFile, cfg: ModelConfig, keep_quantized: bool = False,
             shapes_only: bool = False) -> dict[str, torch.Tensor | QuantizedRows]:
    arch = cfg.extra["gguf_architecture"]
    take = _Taker(gguf, arch, keep_quantized, shapes_only)
    d, d_ff = cfg.d_model, cfg.d_ff
    out = {"tok_emb.weight": take("token_embd.weight", cfg.vocab_size, d)}
    if cfg.pos == "learned":
        out["pos_emb.weight"] = take("position_embd.weight", cfg.block_size, d)
    out.update(_norm(take, cfg, "norm_f", "output_norm"))
    for i in range(cfg.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        out.update(_norm(take, cfg, b + "norm1", g + "attn_norm"))
        out.update(_norm(take, cfg, b + "norm2", g + "ffn_norm"))
        out.update(_attention(take, cfg, arch, b + "attn.", g))
        if cfg.mlp == "swiglu":
            out[b + "mlp.fc_in.weight"] = _cat([take(g + "ffn_gate.weight", d_ff, d),
                                                take(g + "ffn_up.weight", d_ff, d)])
        else:
            out[b + "mlp.fc_in.weight"] = take(g + "ffn_up.weight", d_ff, d)
        out[b + "mlp.fc_out.weight"] = take(g + "ffn_down.weight", d, d_ff)
        if cfg.bias:
            out[b + "mlp.fc_in.bias"] = take(g + "ffn_up.bias", d_ff)
            out[b + "mlp.fc_out.bias"] = take(g + "ffn_down.bias", d)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("output.weight", cfg.vocab_size, d)
    elif keep_quantized:  # the head reads the embedding's blocks; the lookup stays float
        head = gguf.raw_rows("token_embd.weight")
        if head is not None:
            out["lm_head.weight"] = head
    take.used.add("output.weight")  # tied: a byte-for-byte copy of the embedding
    unused = sorted(set(gguf.tensors) - take.used)
    if unused:
        raise CentelhaError(f"{gguf.path} has tensors a {arch} model does not use "
                            f"({', '.join(map(_shown, unused[:3]))}): a variant centelha "
                            "does not support")
    return out


def _norm(take: _Taker, cfg: ModelConfig, ours: str, theirs: str) -> dict[str, torch.Tensor]:
    out = {f"{ours}.weight": take(f"{theirs}.weight", cfg.d_model)}
    if cfg.norm == "layernorm" and cfg.bias:
        out[f"{ours}.bias"] = take(f"{theirs}.bias", cfg.d_model)
    return out


def _attention(take: _Taker, cfg: ModelConfig, arch: str, ours: str,
               theirs: str) -> dict[str, torch.Tensor]:
    d, hd = cfg.d_model, cfg.head_dim
    rows = {"q": cfg.n_head * hd, "k": cfg.n_kv_head * hd, "v": cfg.n_kv_head * hd}
    out = {ours + "proj.weight": take(theirs + "attn_output.weight", d, rows["q"])}
    if cfg.bias:
        out[ours + "proj.bias"] = take(theirs + "attn_output.bias", d)
    if arch == "gpt2":
        out[ours + "qkv.weight"] = take(theirs + "attn_qkv.weight", sum(rows.values()), d)
        out[ours + "qkv.bias"] = take(theirs + "attn_qkv.bias", sum(rows.values()))
        return out
    for param in ("weight", "bias") if cfg.qkv_bias else ("weight",):
        columns = (d,) if param == "weight" else ()
        q, k, v = (take(f"{theirs}attn_{x}.{param}", rows[x], *columns) for x in "qkv")
        if arch in PERMUTED_ARCHITECTURES:
            q = _unpermute(q, cfg.n_head)
            k = _unpermute(k, cfg.n_kv_head)
        out[f"{ours}qkv.{param}"] = _cat([q, k, v])
    if cfg.qk_norm:
        out[ours + "q_norm.weight"] = take(theirs + "attn_q_norm.weight", hd)
        out[ours + "k_norm.weight"] = take(theirs + "attn_k_norm.weight", hd)
    return out


# ------------------------------------------------------------------------------------------
# Import: tokenizer
# ------------------------------------------------------------------------------------------
# The split regexes of the Hugging Face tokenizers behind llama.cpp's `tokenizer.ggml.pre`
# names. "gpt2": GPT-2's regex (inside ByteLevel); "digits": the same after splitting
# every digit apart (SmolLM, StarCoder); "llama3": Llama 3's (numbers in groups of three);
# "qwen2": Qwen2's (every digit apart).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_STYLES = {
    "gpt-2": "gpt2", "default": "gpt2", "phi-2": "gpt2", "mpt": "gpt2", "olmo": "gpt2",
    "smollm": "digits", "starcoder": "digits", "refact": "digits", "codeshell": "digits",
    "llama-bpe": "llama3", "llama3": "llama3", "llama-v3": "llama3", "falcon3": "llama3",
    "dbrx": "llama3", "smaug-bpe": "llama3",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2", "stablelm2": "qwen2", "megrez": "qwen2",
}
# what export writes for each style
STYLE_PRE_NAMES = {"gpt2": "gpt-2", "digits": "smollm", "llama3": "llama-bpe", "qwen2": "qwen2"}
# llama.cpp (and Llama 3's tokenizer.json) take a whole pre-token that is in the vocabulary
# as one token, without applying merges
IGNORE_MERGES_PRE = ("llama-bpe", "llama3", "llama-v3", "falcon3")


def _byte_level_pre_tokenizer(style: str) -> pre_tokenizers.PreTokenizer:
    if style == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if style == "digits":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    regex = LLAMA3_REGEX if style == "llama3" else QWEN2_REGEX
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _tokenizer(gguf: _GGUFFile) -> Tokenizer:
    kind = _meta(gguf, "tokenizer.ggml.model", str)
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], str):
        raise CentelhaError(f"{gguf.path} lacks the metadata key tokenizer.ggml.tokens "
                            "(the vocabulary)")
    types = gguf.metadata.get("tokenizer.ggml.token_type")
    if not isinstance(types, np.ndarray) or len(types) != len(tokens):
        types = np.full(len(tokens), int(TokenType.NORMAL))
    if kind == "gpt2":
        pre = _meta(gguf, "tokenizer.ggml.pre", str, "default")
        hf = _bpe_tokenizer(gguf, tokens, types, pre)
        add_bos_default = pre in IGNORE_MERGES_PRE  # llama.cpp: Llama 3 prompts start with BOS
    elif kind == "llama":
        hf = _sentencepiece_tokenizer(gguf, tokens, types)
        add_bos_default = True
    else:
        raise CentelhaError(f"{gguf.path}: tokenizer.ggml.model {kind!r} is not supported "
                            "(supported: gpt2 (byte-level BPE), llama (SentencePiece))")
    config: dict[str, Any] = {
        "add_bos_token": _meta(gguf, "tokenizer.ggml.add_bos_token", bool, add_bos_default)}
    for name in ("bos", "eos"):
        token_id = _meta(gguf, f"tokenizer.ggml.{name}_token_id", int, -1)
        if 0 <= token_id < len(tokens):
            config[f"{name}_token"] = tokens[token_id]
    template = gguf.metadata.get("tokenizer.chat_template")
    if isinstance(template, str) and template:
        config["chat_template"] = template
    tokenizer = Tokenizer(hf, config)
    if kind == "llama":  # decoding drops the space SentencePiece put in front, if it did
        tokenizer.strip_leading_space = _meta(gguf, "tokenizer.ggml.add_space_prefix", bool, True)
    for name in ("eot", "eom"):  # end of turn / of message: generation stops there too
        token_id = _meta(gguf, f"tokenizer.ggml.{name}_token_id", int, -1)
        if 0 <= token_id < len(tokens):
            tokenizer.stop_ids.add(token_id)
    extra = gguf.metadata.get(STOP_IDS_KEY)  # more stop ids than llama.cpp has keys for
    if isinstance(extra, np.ndarray) and extra.dtype.kind in "iu":
        tokenizer.stop_ids |= {int(i) for i in extra if 0 <= int(i) < len(tokens)}
    return tokenizer


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)  # a repeated token keeps its first id
    return vocab


def _special_tokens(tokens: list[str], types: np.ndarray, kinds: tuple[int, ...]):
    return [AddedToken(tokens[i], special=True, normalized=False)
            for i in np.flatnonzero(np.isin(types, [int(k) for k in kinds]))]


def _bpe_tokenizer(gguf: _GGUFFile, tokens: list[str], types: np.ndarray,
                   pre: str) -> HFTokenizer:
    style = PRE_TOKENIZER_STYLES.get(pre)
    if style is None:
        raise CentelhaError(f"{gguf.path}: pre-tokenizer {pre!r} is not supported (supported: "
                            f"{', '.join(PRE_TOKENIZER_STYLES)})")
    raw_merges = gguf.metadata.get("tokenizer.ggml.merges")
    if not isinstance(raw_merges, list):
        raise CentelhaError(f"{gguf.path} lacks the metadata key tokenizer.ggml.merges")
    if raw_merges and not isinstance(raw_merges[0], str):  # items of an array share a type
        raise CentelhaError(f"{gguf.path}: tokenizer.ggml.merges holds "
                            f"{type(raw_merges[0]).__name__} items, not strings")
    merges = []
    for merge in raw_merges:
        left, space, right = merge.partition(" ")
        if not space or not left or not right:
            raise CentelhaError(f"{gguf.path}: bad merge {merge!r} in tokenizer.ggml.merges")
        merges.append((left, right))
    try:
        hf = HFTokenizer(models.BPE(vocab=_vocab(tokens), merges=merges,
                                    ignore_merges=pre in IGNORE_MERGES_PRE))
    except Exception as e:  # the Rust side raises plain Exception
        raise CentelhaError(f"{gguf.path}: the vocabulary and merges do not agree ({e})") from None
    hf.pre_tokenizer = _byte_level_pre_tokenizer(style)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(_special_tokens(tokens, types, (TokenType.CONTROL,
                                                          TokenType.USER_DEFINED)))
    return hf


def _sentencepiece_tokenizer(gguf: _GGUFFile, tokens: list[str],
                             types: np.ndarray) -> HFTokenizer:
    scores = gguf.metadata.get("tokenizer.ggml.scores")
    if not isinstance(scores, np.ndarray) or len(scores) != len(tokens):
        raise CentelhaError(f"{gguf.path} lacks the metadata key tokenizer.ggml.scores "
                            "(needed by a SentencePiece tokenizer)")
    vocab = _vocab(tokens)
    unk_id = _meta(gguf, "tokenizer.ggml.unknown_token_id", int, -1)
    unk = tokens[unk_id] if 0 <= unk_id < len(tokens) else None
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=_merges_from_scores(tokens, types, scores),
                                unk_token=unk, fuse_unk=True, byte_fallback=True))
    # SentencePiece writes a space as "▁" and (usually) starts the text with one. The
    # Metaspace decoder is what `Tokenizer` recognises as SentencePiece-style.
    prefix = _meta(gguf, "tokenizer.ggml.add_space_prefix", bool, True)
    hf.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("\u2581")] if prefix else []) + [normalizers.Replace(" ", "\u2581")])
    hf.decoder = decoders.Sequence([
        decoders.ByteFallback(), decoders.Fuse(),
        decoders.Metaspace("\u2581", prepend_scheme="first" if prefix else "never", split=False)])
    hf.add_special_tokens(_special_tokens(tokens, types, (TokenType.CONTROL, TokenType.UNKNOWN,
                                                          TokenType.USER_DEFINED)))
    return hf


def _merges_from_scores(tokens: list[str], types: np.ndarray,
                        scores: np.ndarray) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces is a merge, ranked by the merged piece's
    score (higher first): SentencePiece's BPE joins the best-scoring pair first."""
    kinds = (int(TokenType.NORMAL), int(TokenType.USER_DEFINED))
    mergeable = {t: i for i, t in enumerate(tokens) if int(types[i]) in kinds}
    ranked = []
    for token, i in mergeable.items():
        if len(token) > MAX_MERGE_TOKEN:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-float(scores[i]), mergeable[left], mergeable[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


# ------------------------------------------------------------------------------------------
# Import: the public entry point
# ------------------------------------------------------------------------------------------
def load_gguf(path: str | Path, keep_quantized: bool = False
              ) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Read a GGUF file: metadata -> ModelConfig, tensors dequantized to float32 and renamed
    to centelha's state-dict names, tokenizer rebuilt from tokenizer.ggml.* (with chat
    template).

    Build the model with `Transformer.from_tensors(cfg, tensors)` (or `Transformer(cfg)` +
    `load_state_dict(tensors, strict=False)`); with tied embeddings there is no
    `lm_head.weight`. With `keep_quantized`, matrices stored as Q8_0/Q4_0/Q4_1/Q4_K come
    back as `QuantizedRows` (their blocks, for `quant.QuantLinear`), and a tied head gets
    the embedding's blocks under `lm_head.weight`.
    """
    gguf = _read_gguf(path)
    try:
        cfg = _config(gguf)
        tokenizer = _tokenizer(gguf)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise CentelhaError(f"{gguf.path}: the tokenizer has {tokenizer.vocab_size} tokens, "
                                f"the embedding only {cfg.vocab_size} rows")
        tensors = _tensors(gguf, cfg, keep_quantized)
    finally:
        gguf.close()
    return cfg, tensors, tokenizer


def read_gguf_shapes(path: str | Path) -> tuple[ModelConfig, dict[str, tuple[int, ...]]]:
    """The config `load_gguf` would build and the shape of each tensor it would return
    (centelha names; a tied head has none), from the header alone: no weight is read.

    Two small exceptions, both needed for the config itself: Llama 3's `rope_freqs`
    vector (head_dim/2 values), and, in a file that stores `output.weight` beside
    `token_embd.weight` with the same type and shape, a comparison of the two to tell
    whether the head is tied (it stops at the first chunk that differs).
    """
    gguf = _read_gguf(path)
    try:
        cfg = _config(gguf)
        tensors = _tensors(gguf, cfg, shapes_only=True)
    finally:
        gguf.close()
    return cfg, {name: tuple(t.shape) for name, t in tensors.items()}


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------
def _export_architecture(cfg: ModelConfig) -> str:
    """The llama.cpp architecture that runs this config exactly."""
    arch = _matching_architecture(cfg)
    if arch != "llama" and cfg.rope_kind == "llama3":
        # llama.cpp reads Llama 3's frequency table (rope_freqs) for llama models only
        raise CentelhaError(f"Llama 3 rope scaling cannot be exported on a {arch} model")
    return arch


def _matching_architecture(cfg: ModelConfig) -> str:
    switches = (cfg.norm, cfg.pos, cfg.mlp)
    if switches == ("layernorm", "learned", "gelu") and cfg.bias and cfg.qkv_bias \
            and not cfg.qk_norm and cfg.n_kv_head == cfg.n_head \
            and cfg.head_dim * cfg.n_head == cfg.d_model:
        return "gpt2"
    if switches == ("rmsnorm", "rope", "swiglu") and not cfg.bias:
        if not cfg.qkv_bias and not cfg.qk_norm:
            return "llama"
        if cfg.qkv_bias and not cfg.qk_norm:
            return "qwen2"
        if cfg.qk_norm and not cfg.qkv_bias:
            return "qwen3"
    raise CentelhaError(
        "GGUF export supports gpt2-style models (layernorm with biases, learned positions, "
        "gelu) and llama-style ones (rmsnorm, rope, swiglu, no biases; q/k/v biases -> qwen2, "
        f"q/k norms -> qwen3); this config has norm={cfg.norm}, pos={cfg.pos}, mlp={cfg.mlp}, "
        f"bias={cfg.bias}, qkv_bias={cfg.qkv_bias}, qk_norm={cfg.qk_norm}")


def _export_tensors(model: Transformer, arch: str) -> dict[str, torch.Tensor]:
    """centelha's state dict under GGUF names, in GGUF's layout (the inverse of `_tensors`)."""
    cfg = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["tok_emb.weight"]}
    if arch == "gpt2":
        out["position_embd.weight"] = sd["pos_emb.weight"]
    out["output_norm.weight"] = sd["norm_f.weight"]
    if "norm_f.bias" in sd:
        out["output_norm.bias"] = sd["norm_f.bias"]
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    q_size, kv_size = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    for i in range(cfg.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        renames = {"norm1": "attn_norm", "norm2": "ffn_norm", "attn.proj": "attn_output",
                   "attn.q_norm": "attn_q_norm", "attn.k_norm": "attn_k_norm",
                   "mlp.fc_out": "ffn_down"}
        if arch == "gpt2":
            renames.update({"attn.qkv": "attn_qkv", "mlp.fc_in": "ffn_up"})
        for ours, theirs in renames.items():
            for param in ("weight", "bias"):
                if f"{b}{ours}.{param}" in sd:
                    out[f"{g}{theirs}.{param}"] = sd[f"{b}{ours}.{param}"]
        if arch == "gpt2":
            continue
        for param in ("weight", "bias"):
            if f"{b}attn.qkv.{param}" not in sd:
                continue
            q, k, v = sd[f"{b}attn.qkv.{param}"].split([q_size, kv_size, kv_size])
            if arch in PERMUTED_ARCHITECTURES:
                q = _rotate_half_to_interleaved(q, cfg.n_head)
                k = _rotate_half_to_interleaved(k, cfg.n_kv_head)
            out.update({f"{g}attn_q.{param}": q, f"{g}attn_k.{param}": k,
                        f"{g}attn_v.{param}": v})
        gate, up = sd[f"{b}mlp.fc_in.weight"].split([cfg.d_ff, cfg.d_ff])
        out.update({f"{g}ffn_gate.weight": gate, f"{g}ffn_up.weight": up})
    if cfg.rope_kind == "llama3":
        out["rope_freqs.weight"] = torch.from_numpy(
            _llama3_factors(cfg.rope_scaling, cfg.rope_theta, cfg.head_dim))
    return {k: v.contiguous() for k, v in out.items()}


def _encode(name: str, tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, Q | None]:
    """(array, raw type for quantized data) as the writer wants them. Norms, biases and
    other vectors stay float32 (llama.cpp expects that); so does the position table,
    which llama.cpp's converter also keeps in float32."""
    array = tensor.numpy().astype(np.float32)
    if array.ndim < 2 or name in ("position_embd.weight", "rope_freqs.weight") \
            or dtype == "f32":
        return array, None
    if dtype == "q8_0" and array.shape[-1] % GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return quantize(array, Q.Q8_0), Q.Q8_0
    # f16, and q8_0 rows that do not fill whole blocks (llama.cpp falls back the same way)
    half = array.astype(np.float16)
    if not np.isfinite(half).all():
        raise CentelhaError(f"weight {name} has values beyond float16's range; export with "
                            "dtype='f32' or 'q8_0'")
    return half, None


def save_gguf(model: Transformer, tokenizer: Tokenizer, path: str | Path,
              dtype: str = "f16") -> None:
    """Write a GGUF file that llama.cpp / LM Studio can run. dtype: "f32", "f16" or "q8_0"
    (2-D weight matrices quantized; norms/biases stay f32). Written atomically (temp file +
    os.replace)."""
    from centelha.atomic import atomic_write

    if dtype not in EXPORT_FILE_TYPES:
        raise CentelhaError(f"GGUF dtype must be one of {', '.join(EXPORT_FILE_TYPES)}, "
                            f"not {dtype!r}")
    cfg = model.cfg
    arch = _export_architecture(cfg)
    vocab = _export_vocab(tokenizer, cfg.vocab_size)
    tensors = {name: _encode(name, t, dtype) for name, t in _export_tensors(model, arch).items()}

    def write(tmp: Path) -> None:
        writer = GGUFWriter(str(tmp), arch)
        _write_model_metadata(writer, cfg, arch, dtype, name=Path(path).stem)
        _write_tokenizer_metadata(writer, tokenizer, vocab)
        for name, (array, raw_dtype) in tensors.items():
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as e:
        raise CentelhaError(f"cannot write {path}: {e.strerror or e}") from None


def _write_model_metadata(writer: GGUFWriter, cfg: ModelConfig, arch: str, dtype: str,
                          name: str) -> None:
    writer.add_name(name)
    writer.add_file_type(EXPORT_FILE_TYPES[dtype])
    if dtype == "q8_0":
        writer.add_quantization_version(2)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    if arch == "gpt2":
        writer.add_layer_norm_eps(cfg.norm_eps)
        return
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim * cfg.n_head != cfg.d_model:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    if cfg.rope_kind == "linear":  # llama3 scaling travels as the rope_freqs tensor
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_scaling["factor"])


# -- exporting the tokenizer -------------------------------------------------------------------
@dataclass
class _ExportVocab:
    model: str  # "gpt2" or "llama"
    tokens: list[str]
    types: list[int]
    merges: list[str]  # gpt2
    scores: list[float]  # llama
    pre: str | None = None
    add_space_prefix: bool = False


def _export_vocab(tokenizer: Tokenizer, vocab_size: int) -> _ExportVocab:
    if tokenizer.kind == "char":
        raise CentelhaError("GGUF export needs a byte-level BPE tokenizer (or an imported "
                            "SentencePiece one); this model has a character tokenizer, which "
                            "llama.cpp cannot reproduce")
    spec = json.loads(tokenizer.hf.to_str())
    if spec["model"].get("type") != "BPE":
        raise CentelhaError("GGUF export needs a BPE tokenizer, not "
                            f"{spec['model'].get('type')!r}")
    ids = tokenizer.hf.get_vocab(with_added_tokens=True)
    if len(ids) > vocab_size:
        raise CentelhaError(f"the tokenizer has {len(ids)} tokens, the model only {vocab_size}")
    tokens: list[str | None] = [None] * vocab_size
    for token, i in ids.items():
        if i >= vocab_size:
            raise CentelhaError(f"token {token!r} has id {i}, beyond the model's {vocab_size} rows")
        tokens[i] = token
    added = tokenizer.hf.get_added_tokens_decoder()
    types = []
    for i, token in enumerate(tokens):
        if token is None:  # the model has more rows than the tokenizer has tokens
            tokens[i], kind = f"[PAD{i}]", TokenType.UNUSED
        elif i in added:
            kind = TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED
        elif tokenizer.kind == "spm" and token.startswith("<0x") and len(token) == 6:
            kind = TokenType.BYTE
        else:
            kind = TokenType.NORMAL
        types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    if tokenizer.kind == "spm":
        unk = spec["model"].get("unk_token")
        if unk in ids:
            types[ids[unk]] = int(TokenType.UNKNOWN)
        return _ExportVocab("llama", tokens, types, [], _scores_from_merges(tokens, merges),
                            add_space_prefix=tokenizer.strip_leading_space)
    return _ExportVocab("gpt2", tokens, types, merges, [], pre=_pre_name(spec))


def _write_stop_ids(writer: GGUFWriter, tokenizer: Tokenizer, eos: int | None) -> None:
    """Every stop id besides EOS: llama.cpp's end-of-turn and end-of-message keys hold
    two; all of them also go in STOP_IDS_KEY, which centelha reads back."""
    others = sorted(tokenizer.stop_ids - {eos})
    if tokenizer.eot_id in others:  # <|endoftext|> is the natural end of turn
        others.remove(tokenizer.eot_id)
        others.insert(0, tokenizer.eot_id)
    if others:
        writer.add_eot_token_id(others[0])
    if len(others) > 1:
        writer.add_eom_token_id(others[1])
    if len(others) > 2:
        writer.add_array(STOP_IDS_KEY, others)


def _pre_name(spec: dict) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer: the style whose pre-tokenizer
    serializes to the same JSON."""
    ours = json.dumps(spec.get("pre_tokenizer"), sort_keys=True)
    for style, name in STYLE_PRE_NAMES.items():
        probe = HFTokenizer(models.BPE())
        probe.pre_tokenizer = _byte_level_pre_tokenizer(style)
        if json.dumps(json.loads(probe.to_str())["pre_tokenizer"], sort_keys=True) == ours:
            return name
    raise CentelhaError("this tokenizer's pre-tokenizer has no llama.cpp equivalent "
                        f"(supported: the {', '.join(STYLE_PRE_NAMES.values())} splitting rules)")


def _scores_from_merges(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece scores that make llama.cpp merge in the order of `merges`: a piece
    scores minus the rank of the first merge that makes it."""
    rank: dict[str, int] = {}
    for i, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), i)
    floor = -float(len(merges) + 1)
    return [-float(rank[t]) if t in rank else floor for t in tokens]


def _write_tokenizer_metadata(writer: GGUFWriter, tokenizer: Tokenizer,
                              vocab: _ExportVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.model == "gpt2":
        writer.add_token_merges(vocab.merges)
    else:
        writer.add_token_scores(vocab.scores)
        writer.add_add_space_prefix(vocab.add_space_prefix)
    # llama.cpp stops at EOS; a model trained here ends its documents with <|endoftext|>
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.eot_id
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else eos
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos)
    _write_stop_ids(writer, tokenizer, eos)
    writer.add_add_bos_token(tokenizer.add_bos)
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
