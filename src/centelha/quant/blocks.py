"""The block layout of quantized weights, and quantizing float weights into it.

A block is 32 consecutive input features of one output row (GGUF's QK8_0 / QK4_0 / QK4_1),
so a layer's input width must be a multiple of 32. Two layouts:
- int8 ("Q8"): `qweight` int8 [N, K], `scales` float16 [N, K/32]; w = scale · q, q in
  -127..127 (GGUF's Q8_0 block: fp16 d + 32 int8).
- int4 ("Q4"): `qweight` uint8 [N, K/2], `scales` and `mins` float16 [N, K/32];
  w = scale · q + min, q in 0..15. Byte j (0..15) of a block holds q[j] in its low nibble
  and q[j+16] in its high one (GGUF's Q4_0/Q4_1 order).

From float weights, int8 uses one symmetric scale per output row (max|w|/127) repeated in
each block, so one kernel serves rows and blocks alike; int4 fits a scale and a min per
group of 32, 64 or 128 weights (repeated over the group's blocks; a row that is not a whole
number of groups, like SmolLM2's 576 with 128, ends with a shorter group). Scales and mins
are rounded to float16 first and the weights quantized against the rounded values, the ones
the kernels will use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from centelha.errors import CentelhaError

BLOCK = 32                    # input features per block (GGUF's QK8_0 / QK4_0 / QK4_1)
METHODS = ("int8", "int4")
GROUP_SIZES = (32, 64, 128)   # int4 groups from float weights: whole numbers of blocks

# Ranges tried per int4 group, as shares of max - min: clipping a rare outlier can lower
# the error of all the other weights of the group.
RANGE_SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


# -- checks shared by every entry point (user-facing, so CentelhaError) ---------------------

def check_method(method: str) -> None:
    if method not in METHODS:
        raise CentelhaError(f"unknown quantization method {method!r}: choose one of {METHODS}")


def check_group_size(group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise CentelhaError(f"group size must be one of {GROUP_SIZES}, got {group_size!r}")


def check_in_features(in_features: int, what: str = "the layer") -> None:
    if in_features <= 0 or in_features % BLOCK:
        raise CentelhaError(f"{what} has {in_features} input features: block quantization needs "
                            f"a positive multiple of {BLOCK}")


# -- int8 per output row ------------------------------------------------------------------

def quantize_int8_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-row int8: scale = max|w_row| / 127 (fp16), q = round(w / scale)."""
    n, k = weight.shape
    scale = (weight.abs().amax(dim=1) / 127).to(torch.float16)
    s = scale.float().unsqueeze(1)
    # Quantize against the fp16-rounded scale the kernel will use; a zero row stays zero.
    q = torch.where(s > 0, torch.round(weight / torch.where(s > 0, s, 1.0)), 0.0)
    qweight = q.clamp_(-127, 127).to(torch.int8)
    return qweight, scale.unsqueeze(1).expand(n, k // BLOCK).contiguous()


# -- int4 per group -----------------------------------------------------------------------

def quantize_int4_groups(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int4 per group: (qweight, scales, mins) with q = round((w - min)/scale).

    Whole groups get the least-squares ranges of `fit_int4_ranges`. A row that ends with a
    shorter group (576 with groups of 128) takes plain min/max ranges instead, computed per
    block first and then per group of group_size/32 blocks.
    """
    n, k = weight.shape
    blocks = weight.view(n, k // BLOCK, BLOCK)
    per_group = group_size // BLOCK
    if (k // BLOCK) % per_group == 0:
        scales, mins = fit_int4_ranges(weight.view(n, k // group_size, group_size))
    else:
        scales, mins = _min_max_ranges(blocks, per_group)
    # Back to one scale and min per block, then quantize against the fp16 values kept.
    scales = scales.repeat_interleave(per_group, dim=1)[:, : k // BLOCK].contiguous()
    mins = mins.repeat_interleave(per_group, dim=1)[:, : k // BLOCK].contiguous()
    s, m = scales.float().unsqueeze(-1), mins.float().unsqueeze(-1)
    q = torch.where(s > 0, torch.round((blocks - m) / torch.where(s > 0, s, 1.0)), 0.0)
    q = q.clamp_(0, 15).to(torch.uint8)
    return pack_nibbles(q).view(n, k // 2), scales, mins


def _min_max_ranges(blocks: Tensor, per_group: int) -> tuple[Tensor, Tensor]:
    """fp16 (scale, min) per group of `per_group` blocks, the last group possibly shorter:
    the padding is +inf for minima and -inf for maxima, so it never wins."""
    pad = -blocks.shape[1] % per_group
    n = blocks.shape[0]
    low = F.pad(blocks.amin(dim=-1), (0, pad), value=float("inf")).view(n, -1, per_group)
    high = F.pad(blocks.amax(dim=-1), (0, pad), value=float("-inf")).view(n, -1, per_group)
    mins = low.amin(dim=-1).to(torch.float16)
    scales = ((high.amax(dim=-1) - mins.float()) / 15).to(torch.float16)  # covers min
    return scales, mins


def fit_int4_ranges(groups: Tensor) -> tuple[Tensor, Tensor]:
    """fp16 (scale, min) per group [..., size] that (approximately) minimise the squared error.

    For each candidate range the weights are rounded to 0..15, then scale and min are
    refitted by least squares for those integers; the best candidate per group wins. This
    is what makes 4-bit re-quantization of already-quantized models tolerable (plain
    min/max ranges cost SmolLM2 ≈ 6% perplexity, see docs/LOG.md).
    """
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    span = (high - low).clamp_min(1e-12)
    best_err = torch.full_like(low, float("inf"))
    best_scale, best_min = span / 15, low
    # narrower ranges (clip outliers), and coarser steps from the minimum (a group that
    # already lies on a grid of fewer than 16 levels, as in a re-quantized Q4_1 block)
    candidates = [(span * shrink / 15, low + span * (1 - shrink) / 2)
                  for shrink in RANGE_SHRINKS]
    candidates += [(span / steps, low) for steps in range(1, 15)]
    for scale, start in candidates:
        q = torch.round((groups - start) / scale).clamp_(0, 15)
        q_mean, w_mean = q.mean(-1, keepdim=True), groups.mean(-1, keepdim=True)
        q_var = ((q - q_mean) ** 2).mean(-1, keepdim=True)
        fitted = ((q - q_mean) * (groups - w_mean)).mean(-1, keepdim=True) / q_var.clamp_min(1e-12)
        fitted = torch.where(q_var > 0, fitted, scale)
        offset = w_mean - fitted * q_mean
        err = ((fitted * q + offset - groups) ** 2).sum(-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, fitted, best_scale)
        best_min = torch.where(better, offset, best_min)
    return best_scale.squeeze(-1).to(torch.float16), best_min.squeeze(-1).to(torch.float16)


def pack_nibbles(q: Tensor) -> Tensor:
    """[..., 32] values 0..15 → [..., 16] bytes: q[j] low nibble, q[j+16] high nibble."""
    return q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << 4)
