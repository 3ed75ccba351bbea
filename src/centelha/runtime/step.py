"""`Step`: how one forward call meets the positions and the KV cache, shared by every layer.

`plan` (plan.py) fills one in per forward call; the layers only read it. Without a cache a
step is just the rotary tables and "causal"; with one it also says which cache rows the
inputs continue, where each row's new positions go, what the queries may attend over, and
which attention implementation runs (`attend`: None for the reference path).

Design choices a reader should know:
- Rows that all start at the same position (the common case: one sequence, or a prefill)
  write the cache through one slice; rows of different lengths write through an index of
  per-row positions and need a mask, because the shorter rows' queries must not see the
  stale slots past their own length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from centelha.runtime.cache import KVCache


@dataclass
class Step:
    """One forward call's plan: positions, cache slots, mask, rotary rows, attention path."""
    cache: KVCache | None = None
    rows: slice | None = None              # the cache rows the inputs continue
    start: int | None = 0                  # the rows' common start, or None when they differ
    positions: torch.Tensor | None = None  # (B, T) positions of the inputs when starts differ
    keys: int = 0                          # how many cached positions the queries attend over
    mask: torch.Tensor | None = None       # True where a query may look; None: see `causal`
    causal: bool = True                    # no cached past: plain causal masking
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, signed sin over (B, T, heads, D)
    # The runtime's faster replacement for the reference attention, if any:
    # attend(attention module, heads, step) → (B, T, n_head · head_dim).
    attend: Callable[..., torch.Tensor] | None = None
    kernels: ModuleType | None = None      # for the fused path: the C++ kernels module,
    new_positions: torch.Tensor | None = None  # (B,) int64 each row's new position,
    rope_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # (B or 1, D) rotary rows

    def position_ids(self, T: int, device: torch.device) -> torch.Tensor:
        """Positions of the T inputs: (T,) when the rows share a start, else (B, T)."""
        if self.start is None:
            return self.positions
        return torch.arange(self.start, self.start + T, device=device)

    def remember(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write new keys/values (B, kv_heads, T, D) of `layer` into the cache; return every
        key/value the queries attend over, (B, kv_heads, keys, D), in the keys' dtype."""
        cache_k = self.cache.k[layer, self.rows]
        cache_v = self.cache.v[layer, self.rows]
        if self.start is not None:
            end = self.start + k.shape[2]
            cache_k[:, :, self.start:end] = k
            cache_v[:, :, self.start:end] = v
        else:
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            # an indexed write does not cast as a sliced one does: a float16 cache needs it
            cache_k[rows, :, self.positions] = k.transpose(1, 2).to(cache_k.dtype)
            cache_v[rows, :, self.positions] = v.transpose(1, 2).to(cache_v.dtype)
        cache_k, cache_v = cache_k[:, :, :self.keys], cache_v[:, :, :self.keys]
        if cache_k.dtype != k.dtype:  # a float16 cache under float32 activations
            return cache_k.to(k.dtype), cache_v.to(k.dtype)
        return cache_k, cache_v
