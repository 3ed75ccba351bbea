"""When centelha's C++ kernels (`centelha.kernels`) may stand in for PyTorch operations.

The kernels compute in float32 on the CPU and record no gradient, so they may replace an
operation only under those conditions; otherwise (training, other dtypes, GPUs, or no
compiler) the model's PyTorch code runs. Both functions are called on the hot path, up to
~90 times a decode step, so they test attributes before anything that costs more.
"""

from __future__ import annotations

from types import ModuleType

import torch

from centelha.kernels import load_kernels
from centelha.runtime.cache import KVCache


def inference_kernels(x: torch.Tensor, *params: torch.Tensor) -> ModuleType | None:
    """The C++ kernels module when an operation on `x` and `params` can use it (float32 on
    the CPU, no gradient to record), else None."""
    if x.dtype is not torch.float32 or not x.is_cpu:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return None
    return load_kernels()


def decode_kernels(T: int, cache: KVCache, weight_dtype: torch.dtype) -> ModuleType | None:
    """The C++ kernels when a forward call is one new token per row of a float32 model over
    a float32/float16 CPU cache, with no gradient wanted (the fused attention path); else
    None."""
    if T == 1 and not torch.is_grad_enabled() and cache.k.device.type == "cpu" \
            and cache.k.dtype in (torch.float32, torch.float16) \
            and weight_dtype == torch.float32:
        return load_kernels()
    return None
