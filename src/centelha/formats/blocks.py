"""`QuantizedRows`: a weight matrix kept in its GGUF blocks instead of dequantized.

With `load_gguf(..., keep_quantized=True)` a Q8_0/Q4_0/Q4_1/Q4_K matrix is handed to
centelha's quantized layers as it is stored. Blocks run along a row (the input features),
so a whole row is a run of bytes: the row moves that importing does — the Q/K permutation,
stacking q, k and v into one projection — apply to the byte rows exactly as to a float
matrix. Anything else (mixed block types, say) falls back to float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize


@dataclass
class QuantizedRows:
    """A weight matrix kept in its GGUF blocks: `rows` is uint8 (N, bytes per row), so
    row permutations and concatenations apply to it as to a float matrix."""
    rows: torch.Tensor
    ggml_type: str
    shape: tuple[int, int]  # (N, K) of the float matrix


Matrix = torch.Tensor | QuantizedRows


def map_rows(value: Matrix, move: Callable[[torch.Tensor], torch.Tensor]) -> Matrix:
    """`move` (a reordering of rows) applied to a float matrix, or to the byte rows of blocks."""
    if isinstance(value, QuantizedRows):
        return QuantizedRows(move(value.rows), value.ggml_type, value.shape)
    return move(value)


def stack_rows(parts: list[Matrix]) -> Matrix:
    """Matrices stacked by rows; blocks stay blocks when all parts share a block type."""
    if all(isinstance(p, QuantizedRows) for p in parts) and \
            len({p.ggml_type for p in parts}) == 1:
        rows = torch.cat([p.rows for p in parts])
        return QuantizedRows(rows, parts[0].ggml_type,
                             (sum(p.shape[0] for p in parts), parts[0].shape[1]))
    return torch.cat([dense(p) for p in parts])


def dense(value: Matrix) -> torch.Tensor:
    """A float32 matrix: blocks dequantized, a float matrix as it is."""
    if not isinstance(value, QuantizedRows):
        return value
    qtype = GGMLQuantizationType[value.ggml_type]
    values = dequantize(value.rows.numpy(), qtype)
    return torch.from_numpy(np.ascontiguousarray(values)).reshape(value.shape)
