"""GGUF's quantized blocks → our int8/int4 block buffers, on the raw bytes (numpy).

Our layouts were chosen to be GGUF's own where it can be (see `blocks.py`), so:
- Q8_0 (fp16 d + 32 int8) is copied: scales = d, qweight = the int8 values;
- Q4_0 (fp16 d + 16 bytes) is copied with min = -8d (exact: a power of two);
- Q4_1 (fp16 d, fp16 m + 16 bytes) is copied as it is;
- Q4_K super-blocks of 256 weights are converted: each 32-weight sub-block gets scale d·sc
  and min -dmin·m, rounded to float16 (≈ 5e-4 relative: the one conversion here that is
  not exact), and its nibbles are repacked in our order.
"""

from __future__ import annotations

import numpy as np

from centelha.errors import CentelhaError
from centelha.quant.blocks import BLOCK, check_in_features

GGUF_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K")
QK_K = 256                    # weights per Q4_K super-block
BLOCK_BYTES = {"Q8_0": 2 + 32, "Q4_0": 2 + 16, "Q4_1": 4 + 16, "Q4_K": 4 + 12 + 128}
BLOCK_WEIGHTS = {"Q8_0": BLOCK, "Q4_0": BLOCK, "Q4_1": BLOCK, "Q4_K": QK_K}


def gguf_buffers(raw: np.ndarray, ggml_type: str,
                 shape: tuple[int, int]) -> tuple[str, dict[str, np.ndarray]]:
    """(method, {buffer name: array}) for a GGUF tensor of `shape` = (N, K) (GGUF's
    (ne0, ne1) reversed), its size and type checked first."""
    name = str(getattr(ggml_type, "name", ggml_type)).upper()
    if name not in CONVERTERS:
        raise CentelhaError(f"GGUF type {ggml_type!r} is not supported here: use one of "
                            f"{GGUF_TYPES}")
    n, k = (int(v) for v in shape)
    check_in_features(k, f"the {name} tensor")
    per_block = BLOCK_WEIGHTS[name]
    if k % per_block:
        raise CentelhaError(f"{name} rows must be a multiple of {per_block} weights, got {k}")
    data = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    expected = n * (k // per_block) * BLOCK_BYTES[name]
    if data.size != expected:
        raise CentelhaError(f"a {name} tensor of shape {(n, k)} has {expected} bytes, "
                            f"got {data.size}")
    blocks = data.reshape(n, k // per_block, BLOCK_BYTES[name])
    method = "int8" if name == "Q8_0" else "int4"
    return method, CONVERTERS[name](blocks, n, k)


def _float16_field(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 stored at bytes start..start+1 of every block, [n, blocks, 1]."""
    return blocks[..., start:start + 2].copy().view(np.float16)


def q8_0(blocks: np.ndarray, n: int, k: int) -> dict[str, np.ndarray]:
    scales = _float16_field(blocks, 0).reshape(n, k // BLOCK)
    q = blocks[..., 2:].copy().view(np.int8).reshape(n, k)
    # -128 never comes out of ggml's quantizer; AVX2's sign trick cannot represent it.
    np.maximum(q, -127, out=q)
    return {"qweight": q, "scales": scales}


def q4_0(blocks: np.ndarray, n: int, k: int) -> dict[str, np.ndarray]:
    d = _float16_field(blocks, 0).reshape(n, k // BLOCK)
    mins = (d.astype(np.float32) * -8).astype(np.float16)  # exact: a power of two
    return {"qweight": blocks[..., 2:].reshape(n, k // 2), "scales": d, "mins": mins}


def q4_1(blocks: np.ndarray, n: int, k: int) -> dict[str, np.ndarray]:
    d = _float16_field(blocks, 0).reshape(n, k // BLOCK)
    m = _float16_field(blocks, 2).reshape(n, k // BLOCK)
    return {"qweight": blocks[..., 4:].reshape(n, k // 2), "scales": d, "mins": m}


def q4_k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins of Q4_K super-blocks from their 12 packed bytes [..., 12].

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the
    same for mins; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high).
    """
    p = packed.astype(np.uint8)
    sc_lo, m_lo, mixed = p[..., 0:4], p[..., 4:8], p[..., 8:12]
    scales = np.concatenate([sc_lo & 0x3F, (mixed & 0x0F) | ((sc_lo >> 6) << 4)], axis=-1)
    mins = np.concatenate([m_lo & 0x3F, (mixed >> 4) | ((m_lo >> 6) << 4)], axis=-1)
    return scales, mins


def q4_k(blocks: np.ndarray, n: int, k: int) -> dict[str, np.ndarray]:
    d = _float16_field(blocks, 0).astype(np.float32)                      # [n, S, 1]
    dmin = _float16_field(blocks, 2).astype(np.float32)
    sc, m = q4_k_scales_mins(blocks[..., 4:16])                           # [n, S, 8]
    scales = (d * sc.astype(np.float32)).astype(np.float16).reshape(n, k // BLOCK)
    mins = (-(dmin * m.astype(np.float32))).astype(np.float16).reshape(n, k // BLOCK)
    # Each run of 32 bytes holds two sub-blocks: low nibbles = the first 32 weights, high
    # nibbles = the next 32. Unpack to one value per byte, then repack in our order.
    runs = blocks[..., 16:].reshape(n, k // QK_K, 4, 32)
    values = np.stack([runs & 0x0F, runs >> 4], axis=3).reshape(n, k // BLOCK, BLOCK)
    packed = values[..., :16] | (values[..., 16:] << 4)
    return {"qweight": packed.reshape(n, k // 2), "scales": scales, "mins": mins}


CONVERTERS = {"Q8_0": q8_0, "Q4_0": q4_0, "Q4_1": q4_1, "Q4_K": q4_k}
