"""`plan`: one forward call's `Step`, computed once before the first layer.

What it decides, in order: that the inputs fit the context; their positions (one common
start, or one per row); what the queries may attend over (causal, a block-causal mask over
the cache, or a per-row mask); the rotary rows for those positions; and which attention
implementation runs:

- one new token per row, float32 model, CPU cache: `fused_attention` (one C++ call a layer);
- up to `DECODE_TOKENS` new tokens per row over a cached past: `few_query_attention`;
- anything else (training, prefill, other devices): the reference path (`attend` None).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from centelha.errors import CentelhaError
from centelha.runtime.attention import DECODE_TOKENS, few_query_attention, fused_attention
from centelha.runtime.cache import KVCache
from centelha.runtime.dispatch import decode_kernels
from centelha.runtime.step import Step


def plan(model: nn.Module, B: int, T: int, cache: KVCache | None, rows: slice | None,
         device: torch.device) -> Step:
    """The Step of `model` (a Transformer) reading ids (B, T), continuing cache rows `rows`
    (default: B rows from the first) when there is a cache."""
    if cache is None:
        return uncached_step(model, T)
    rows = rows if rows is not None else slice(0, B)
    starts = cache.lengths[rows]
    if len(starts) != B:
        raise ValueError(f"{B} inputs for {len(starts)} cache rows")
    keys = max(starts) + T
    if keys > cache.max_len:
        raise CentelhaError(f"sequence of {keys} tokens is longer than the context "
                            f"({cache.max_len} tokens)")
    kernels = decode_kernels(T, cache, model.tok_emb.weight.dtype)
    if len(set(starts)) == 1:
        step = shared_start_step(model, T, cache, rows, starts[0], keys, device)
    else:
        step = ragged_step(model, T, cache, rows, starts, keys, device,
                           masked=kernels is None)  # the kernel masks by position itself
    return choose_attention(model, step, kernels, starts, T)


def uncached_step(model: nn.Module, T: int) -> Step:
    """Every position attends to itself and those before it (training, scoring)."""
    if T > model.cfg.block_size:
        raise CentelhaError(f"sequence of {T} tokens is longer than the context "
                            f"({model.cfg.block_size} tokens)")
    step = Step(causal=T > 1)
    if model.cfg.pos == "rope":
        cos, sin = model.rope(0, T)
        step.rope = (cos[:, None], sin[:, None])  # (T, 1, D): over (B, T, heads, D)
    return step


def shared_start_step(model: nn.Module, T: int, cache: KVCache, rows: slice, start: int,
                      keys: int, device: torch.device) -> Step:
    """Rows continuing from one common position `start`."""
    step = Step(cache, rows, start, keys=keys, causal=start == 0 and T > 1)
    if start > 0 and T > 1:
        # new queries see every cached position and the causal part of their block
        step.mask = torch.ones(T, keys, dtype=torch.bool, device=device).tril(start)
    if model.cfg.pos == "rope":
        cos, sin = model.rope(start, T)
        step.rope = (cos[:, None], sin[:, None])  # (T, 1, D): over (B, T, heads, D)
    return step


def ragged_step(model: nn.Module, T: int, cache: KVCache, rows: slice, starts: list[int],
                keys: int, device: torch.device, masked: bool) -> Step:
    """Rows continuing from different positions: each query sees its own row's past only."""
    first = torch.tensor(starts, device=device)[:, None]
    positions = first + torch.arange(T, device=device)
    mask = None
    if masked:
        mask = (torch.arange(keys, device=device) <= positions[:, :, None])[:, None]
    step = Step(cache, rows, None, positions, keys, mask, causal=False)
    if model.cfg.pos == "rope":
        cos, sin = model.rope(0, keys)
        step.rope = (cos[positions][:, :, None], sin[positions][:, :, None])  # (B, T, 1, D)
    return step


def choose_attention(model: nn.Module, step: Step, kernels: ModuleType | None,
                     starts: list[int], T: int) -> Step:
    """Set `step.attend` to the fastest path that applies (see the module's docstring)."""
    if kernels is not None:
        step.attend, step.kernels = fused_attention, kernels
        step.new_positions = torch.tensor(starts, dtype=torch.long)
        empty = step.cache.k.new_empty(0)
        step.rope_rows = tuple(t.reshape(-1, model.cfg.head_dim) for t in step.rope) \
            if step.rope else (empty, empty)
    elif T <= DECODE_TOKENS and not step.causal:
        step.attend = few_query_attention
    return step
