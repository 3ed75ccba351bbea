"""Faster equivalents of the reference attention (`Attention.forward`) for decoding.

`plan` picks one of these per forward call (`Step.attend`); it takes over from the reference
after the QKV projection and the q/k norms, and returns what the reference hands the output
projection: (B, T, n_head · head_dim).

- `few_query_attention`, for a few new queries per row over a cache: the reference's rotary
  embedding and cache write, then attention as two batched matrix products, because
  PyTorch's CPU flash kernel (behind `scaled_dot_product_attention`) costs milliseconds for
  one query over a cache view.
- `fused_attention`, for one new token per row in float32 on the CPU: rotary embedding,
  cache write and attention in one C++ call (`attend_one`, kernels/decode.cpp), because
  the ~15 small PyTorch operations it replaces cost more in dispatch than in arithmetic.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from centelha.runtime.step import Step

# Queries per row at or below which attention over a cache is two batched matrix products
# instead of scaled_dot_product_attention.
DECODE_TOKENS = 4


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q·kᵀ/√D)·v for a few queries q (B, H, T, D) over keys and values
    (B, kv_heads, S, D); `mask` (T, S) or (B, 1, T, S), True where a query may look.
    Grouped-query heads are handled by folding each group's queries together, so keys and
    values are never copied."""
    B, H, T, D = q.shape
    kv_heads = k.shape[1]
    group = H // kv_heads
    q = q.reshape(B, kv_heads, group * T, D)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))  # (B, kv, group·T, S)
    if mask is not None:
        if mask.dim() == 2:  # (T, S): the same for every row and head
            mask = mask[None, None]
        # (B, 1, T, S) → repeat over the group's queries, which are laid out group-major
        mask = mask.expand(B, 1, T, mask.shape[-1]).repeat(1, 1, group, 1)
        scores = scores.masked_fill(~mask, float("-inf"))
    y = scores.softmax(-1) @ v
    return y.reshape(B, H, T, D)


def few_query_attention(attn: nn.Module, heads: torch.Tensor, step: Step) -> torch.Tensor:
    """The reference path of `attn` (an `Attention`) with `decode_attention` in place of
    scaled_dot_product_attention; `heads` is (B, T, n_head + 2·n_kv_head, head_dim)."""
    B, T = heads.shape[:2]
    q, k, v = attn.queries_keys_values(heads, step)
    return decode_attention(q, k, v, step.mask).transpose(1, 2).reshape(B, T, attn.q_size)


def fused_attention(attn: nn.Module, heads: torch.Tensor, step: Step) -> torch.Tensor:
    """The C++ kernel's version of the reference path for one new token per row (T = 1):
    rotary embedding, cache write and attention in one call."""
    B, _, n_heads, head_dim = heads.shape
    cos, sin = step.rope_rows
    y = step.kernels.attend_one(heads.view(B, n_heads, head_dim), cos, sin, step.cache.k,
                                step.cache.v, attn.layer, step.rows.start, step.new_positions,
                                attn.cfg.n_head, attn.cfg.n_kv_head)
    return y.view(B, 1, attn.q_size)
