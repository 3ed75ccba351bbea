"""`KVCache`: the keys and values a model has computed, kept so decoding never recomputes them.

Design choices a reader should know:
- Preallocated for the whole context (layers, rows, kv heads, positions, head size):
  decoding writes into it in place, so shapes never change from one step to the next.
- One row per sequence, each with its own length, so sequences of different lengths decode
  together (the engine's batch). A forward call works on a contiguous range of rows, so the
  cache is only ever read and written through views, never gathered or copied.
- Its dtype may differ from the model's: a float16 cache under a float32 model halves the
  memory and what every decode step reads.
"""

from __future__ import annotations

import torch

from centelha.config import ModelConfig


class KVCache:
    """Keys and values of every layer for `batch` rows, up to `max_len` positions each.

    `k` and `v` are (n_layer, batch, n_kv_head, max_len, head_dim); `lengths[row]` is how
    many positions of that row are filled. The model writes the new positions during a
    forward call and then `advance`s the rows it was given.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (cfg.n_layer, batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.lengths = [0] * batch  # filled positions of each row

    @property
    def pos(self) -> int:
        """The filled length, when every row has the same one."""
        if len(set(self.lengths)) != 1:
            raise ValueError("rows of this cache have different lengths")
        return self.lengths[0]

    def advance(self, rows: slice, count: int) -> None:
        """Rows `rows` now hold `count` more positions (written by the forward call)."""
        for row in range(len(self.lengths))[rows]:
            self.lengths[row] += count

    def reset(self, rows: slice = slice(None)) -> None:
        """Forget what `rows` hold (their keys and values are simply overwritten later)."""
        for row in range(len(self.lengths))[rows]:
            self.lengths[row] = 0
