"""Products and dequantization of int8/int4 blocks, and which code computes them.

Decoding one token multiplies a handful of activation rows by every weight matrix once, so
its speed is the speed of reading the weights: bytes per weight decide it. Our C++ kernels
(`centelha.kernels`) multiply the blocks directly and, on a 2-core AVX2/AVX-512 machine,
run a decode matrix-vector product several times faster than fp32 `F.linear`
(benchmarks/kernels.py).

Why the kernels quantize activations too: x86 multiplies bytes fastest as integers (AVX2
maddubs/madd, VNNI dpbusd: 32 multiply-adds per instruction). Each 32-block of an activation
row becomes int8 with one scale (max|x|/127), its products with a weight block are summed as
integers and scaled once. It costs ≈ 0.5% relative error on a layer's output, far below what
the 4-bit weights themselves cost, and it is what llama.cpp does.

Why long prefills do not use them: with more than `DECODE_MAX_ROWS` activation rows the
weights are read once for many rows and arithmetic dominates, where fp32 GEMM (MKL/oneDNN)
is strong, so those calls dequantize the weight to float32 (C++, or vectorised PyTorch) and
call `F.linear`. Each dequantization is a fresh float32 copy of the matrix, which on the
2-core development machine costs more than GEMM saves up to at least 64 rows: hence 64
(docs/LOG.md). The same path serves inputs that need gradients (the kernels have no
backward) and non-CPU tensors.

Fallback: without the compiled kernels (no compiler, non-x86, `CENTELHA_NO_KERNELS=1`, or a
failed build, which only warns) every product is `F.linear(x, dequantize())` in plain
PyTorch: always correct, slower. `q8_matmul`/`q4_matmul` take `use_kernels` to force either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from centelha.errors import CentelhaError
from centelha.kernels import load_kernels
from centelha.quant.blocks import BLOCK

DECODE_MAX_ROWS = 64          # up to this many activation rows use the integer kernels


def dequantize_q8(qweight: Tensor, scales: Tensor, use_kernels: bool | None = None) -> Tensor:
    """float32 [N, K] from Q8 blocks: w = scale · q (exact: an fp16 times an int8 fits fp32)."""
    kernels = chosen_kernels(use_kernels)
    if kernels is not None and qweight.device.type == "cpu":
        return kernels.q8_dequantize(qweight, scales)
    n, k = qweight.shape
    blocks = qweight.view(n, k // BLOCK, BLOCK).float() * scales.float().unsqueeze(-1)
    return blocks.view(n, k)


def dequantize_q4(qweight: Tensor, scales: Tensor, mins: Tensor,
                  use_kernels: bool | None = None) -> Tensor:
    """float32 [N, K] from Q4 blocks: w = scale · q + min (one rounding, like gguf's numpy)."""
    kernels = chosen_kernels(use_kernels)
    if kernels is not None and qweight.device.type == "cpu":
        return kernels.q4_dequantize(qweight, scales, mins)
    n, half = qweight.shape
    packed = qweight.view(n, half // (BLOCK // 2), BLOCK // 2)
    q = torch.cat([packed & 0x0F, packed >> 4], dim=-1).float()  # low nibbles first
    blocks = q * scales.float().unsqueeze(-1) + mins.float().unsqueeze(-1)
    return blocks.view(n, 2 * half)


def q8_matmul(x: Tensor, qweight: Tensor, scales: Tensor,
              use_kernels: bool | None = None) -> Tensor:
    """x [..., K] float32 · Q8 weight [N, K] → [..., N] float32.

    use_kernels: None = the C++ kernels when built, False = pure PyTorch, True = the kernels
    or CentelhaError. More than DECODE_MAX_ROWS rows take the dequantize + F.linear path.
    """
    kernels = chosen_kernels(use_kernels)
    if kernels is not None and x.dtype is torch.float32 and x.is_contiguous() \
            and decode_sized(x):
        return kernels.q8_matmul(x, qweight, scales)
    return F.linear(x, dequantize_q8(qweight, scales, use_kernels))


def q4_matmul(x: Tensor, qweight: Tensor, scales: Tensor, mins: Tensor,
              use_kernels: bool | None = None) -> Tensor:
    """x [..., K] float32 · Q4 weight [N, K/2] → [..., N] float32 (see `q8_matmul`)."""
    kernels = chosen_kernels(use_kernels)
    if kernels is not None and x.dtype is torch.float32 and x.is_contiguous() \
            and decode_sized(x):
        return kernels.q4_matmul(x, qweight, scales, mins)
    return F.linear(x, dequantize_q4(qweight, scales, mins, use_kernels))


def chosen_kernels(use_kernels: bool | None):
    """The compiled kernels module, or None for pure PyTorch (see `q8_matmul`)."""
    if use_kernels is False:
        return None
    kernels = load_kernels()
    if kernels is None and use_kernels:
        raise CentelhaError("the low-bit CPU kernels are not available here (see the warning "
                            "from centelha.kernels, or unset CENTELHA_NO_KERNELS)")
    return kernels


def decode_sized(x: Tensor) -> bool:
    """Inputs the integer kernels take: ≤ DECODE_MAX_ROWS rows (any leading dimensions),
    on the CPU, not needing gradients (the caller made them float32 and contiguous)."""
    return (x.numel() <= DECODE_MAX_ROWS * x.shape[-1] and x.is_cpu
            and not (x.requires_grad and torch.is_grad_enabled()))
