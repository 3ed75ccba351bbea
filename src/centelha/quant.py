"""Weight-only quantized linear layers (8-bit and 4-bit blocks) for fast CPU decoding.

Decoding one token multiplies a handful of activation rows by every weight matrix once, so
its speed is the speed of reading the weights from memory: bytes per weight decide it.
`QuantLinear` stores weights in small blocks and multiplies them with our own C++ kernels
(`centelha.kernels`), which on a 2-core AVX2/AVX-512 machine run a decode matrix-vector
product several times faster than fp32 `F.linear` (see benchmarks/kernels.py).

Storage formats (a block = 32 consecutive input features of one output row; K % 32 == 0):
- Q8 ("int8"): `qweight` int8 [N, K], `scales` float16 [N, K/32]; w = scale · q, q in
  -127..127. Exactly GGUF's Q8_0 block (fp16 d + 32 int8), so Q8_0 files load by copying.
- Q4 ("int4"): `qweight` uint8 [N, K/2], `scales` and `mins` float16 [N, K/32];
  w = scale · q + min with q in 0..15. Byte j (0..15) of a block holds q[j] in its low nibble
  and q[j+16] in its high one: GGUF's Q4_0/Q4_1 order, so those blocks load by copying bytes
  (Q4_0: scale d, min -8d). Q4_K super-blocks are converted: each 32-weight sub-block gets
  scale d·sc and min -dmin·m (rounded to float16, ≈ 5e-4 relative: the one conversion here
  that is not exact).
- From float weights: int8 uses one symmetric scale per output row (max|w|/127) repeated
  in each block, so one kernel serves both; int4 uses min/max per group of 32, 64 or 128
  (the group's scale and min repeated over its blocks; a row that is not a whole number of
  groups, like SmolLM2's 576 with 128, ends with a shorter group). Scales and mins are
  rounded to float16 first and the weights quantized against the rounded values.

Why the kernels quantize activations too: x86 multiplies bytes fastest as integers (AVX2
maddubs/madd, VNNI dpbusd: 32 multiply-adds per instruction). Each 32-block of an activation
row becomes int8 with one scale (max|x|/127), its products with a weight block are summed as
integers and scaled once. It costs ≈ 0.5% relative error on a layer's output, far below what
the 4-bit weights themselves cost, and it is what llama.cpp does.

Why prefill does not use them: with more than `DECODE_MAX_ROWS` (8) activation rows, the
weights are read once for many rows and arithmetic dominates, where fp32 GEMM (MKL/oneDNN) is
strong. So those calls dequantize the weight to float32 (C++, or vectorised PyTorch) and call
`F.linear`. The same path serves inputs that need gradients (the kernels have no backward)
and non-CPU tensors. Measured caveat: the dequantization is a fresh float32 copy of the matrix
on every call, and on the 2-core development machine it costs more than GEMM saves up to at
least 64 rows (576→1536, 64 rows: kernel ≈ 0.4 ms, dequantize + F.linear ≈ 0.8 ms), so raising
DECODE_MAX_ROWS, or prefilling in chunks, is worth measuring on the target machines.

Fallback: without the compiled kernels (no compiler, non-x86, `CENTELHA_NO_KERNELS=1`, or a
failed build, which only warns) every product is `F.linear(x, dequantize())` in plain
PyTorch: always correct, slower. `q8_matmul`/`q4_matmul` take `use_kernels` to force either.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from centelha.errors import CentelhaError
from centelha.kernels import load_kernels

__all__ = [
    "QuantLinear",
    "quantize_model",
    "quantized_state",
    "apply_quantized_state",
    "q8_matmul",
    "q4_matmul",
    "dequantize_q8",
    "dequantize_q4",
]

BLOCK = 32                    # input features per block (GGUF's QK8_0 / QK4_0 / QK4_1)
METHODS = ("int8", "int4")
GROUP_SIZES = (32, 64, 128)   # int4 groups from float weights: whole numbers of blocks
DECODE_MAX_ROWS = 64          # up to this many activation rows use the integer kernels
GGUF_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K")
_QK_K = 256                   # weights per Q4_K super-block
_GGUF_BLOCK_BYTES = {"Q8_0": 2 + 32, "Q4_0": 2 + 16, "Q4_1": 4 + 16, "Q4_K": 4 + 12 + 128}
_GGUF_BLOCK_WEIGHTS = {"Q8_0": BLOCK, "Q4_0": BLOCK, "Q4_1": BLOCK, "Q4_K": _QK_K}


# --------------------------------------------------------------------------------------------
# Checks shared by every entry point: the user-facing ones raise CentelhaError.

def _check_method(method: str) -> None:
    if method not in METHODS:
        raise CentelhaError(f"unknown quantization method {method!r}: choose one of {METHODS}")


def _check_group_size(group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise CentelhaError(f"group size must be one of {GROUP_SIZES}, got {group_size!r}")


def _check_in_features(in_features: int, what: str = "the layer") -> None:
    if in_features <= 0 or in_features % BLOCK:
        raise CentelhaError(f"{what} has {in_features} input features: block quantization needs "
                            f"a positive multiple of {BLOCK}")


# --------------------------------------------------------------------------------------------
# Functional forms: dequantization and products.

def dequantize_q8(qweight: Tensor, scales: Tensor, use_kernels: bool | None = None) -> Tensor:
    """float32 [N, K] from Q8 blocks: w = scale · q (exact: an fp16 times an int8 fits fp32)."""
    kernels = _kernels(use_kernels)
    if kernels is not None and qweight.device.type == "cpu":
        return kernels.q8_dequantize(qweight, scales)
    n, k = qweight.shape
    blocks = qweight.view(n, k // BLOCK, BLOCK).float() * scales.float().unsqueeze(-1)
    return blocks.view(n, k)


def dequantize_q4(qweight: Tensor, scales: Tensor, mins: Tensor,
                  use_kernels: bool | None = None) -> Tensor:
    """float32 [N, K] from Q4 blocks: w = scale · q + min (one rounding, like gguf's numpy)."""
    kernels = _kernels(use_kernels)
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
    kernels = _kernels(use_kernels)
    if kernels is not None and x.dtype is torch.float32 and x.is_contiguous() \
            and _decode_sized(x):
        return kernels.q8_matmul(x, qweight, scales)
    return F.linear(x, dequantize_q8(qweight, scales, use_kernels))


def q4_matmul(x: Tensor, qweight: Tensor, scales: Tensor, mins: Tensor,
              use_kernels: bool | None = None) -> Tensor:
    """x [..., K] float32 · Q4 weight [N, K/2] → [..., N] float32 (see `q8_matmul`)."""
    kernels = _kernels(use_kernels)
    if kernels is not None and x.dtype is torch.float32 and x.is_contiguous() \
            and _decode_sized(x):
        return kernels.q4_matmul(x, qweight, scales, mins)
    return F.linear(x, dequantize_q4(qweight, scales, mins, use_kernels))


def _kernels(use_kernels: bool | None):
    if use_kernels is False:
        return None
    kernels = load_kernels()
    if kernels is None and use_kernels:
        raise CentelhaError("the low-bit CPU kernels are not available here (see the warning "
                            "from centelha.kernels, or unset CENTELHA_NO_KERNELS)")
    return kernels


def _decode_sized(x: Tensor) -> bool:
    """Inputs the integer kernels take: ≤ DECODE_MAX_ROWS rows (any leading dimensions),
    on the CPU, not needing gradients (the caller made them float32 and contiguous)."""
    return (x.numel() <= DECODE_MAX_ROWS * x.shape[-1] and x.is_cpu
            and not (x.requires_grad and torch.is_grad_enabled()))


# --------------------------------------------------------------------------------------------
# Quantizing float weights.

def _quantize_int8_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-row int8: scale = max|w_row| / 127 (fp16), q = round(w / scale)."""
    n, k = weight.shape
    scale = (weight.abs().amax(dim=1) / 127).to(torch.float16)
    s = scale.float().unsqueeze(1)
    # Quantize against the fp16-rounded scale the kernel will use; a zero row stays zero.
    q = torch.where(s > 0, torch.round(weight / torch.where(s > 0, s, 1.0)), 0.0)
    qweight = q.clamp_(-127, 127).to(torch.int8)
    return qweight, scale.unsqueeze(1).expand(n, k // BLOCK).contiguous()


def _quantize_int4_groups(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int4 per group: min and (max - min)/15 in fp16, q = round((w - min)/scale).

    Groups are whole blocks, so the statistics are taken per block first, then per group of
    group_size/32 blocks; a row whose length is not a multiple of the group (SmolLM2's 576
    with groups of 128) ends with a shorter group.
    """
    n, k = weight.shape
    blocks = weight.view(n, k // BLOCK, BLOCK)
    per_group = group_size // BLOCK
    pad = -(k // BLOCK) % per_group
    if pad == 0:
        scales, mins = _fit_int4_ranges(weight.view(n, k // group_size, group_size))
    else:
        low = F.pad(blocks.amin(dim=-1), (0, pad), value=float("inf")).view(n, -1, per_group)
        high = F.pad(blocks.amax(dim=-1), (0, pad), value=float("-inf")).view(n, -1, per_group)
        mins = low.amin(dim=-1).to(torch.float16)
        scales = ((high.amax(dim=-1) - mins.float()) / 15).to(torch.float16)  # covers min
    # Back to one scale and min per block, then quantize against the fp16 values kept.
    scales = scales.repeat_interleave(per_group, dim=1)[:, : k // BLOCK].contiguous()
    mins = mins.repeat_interleave(per_group, dim=1)[:, : k // BLOCK].contiguous()
    s, m = scales.float().unsqueeze(-1), mins.float().unsqueeze(-1)
    q = torch.where(s > 0, torch.round((blocks - m) / torch.where(s > 0, s, 1.0)), 0.0)
    q = q.clamp_(0, 15).to(torch.uint8)
    return _pack_nibbles(q).view(n, k // 2), scales, mins


# Ranges tried per group, as shares of max - min: clipping a rare outlier can lower the
# error of all the other weights of the group.
_RANGE_SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def _fit_int4_ranges(groups: Tensor) -> tuple[Tensor, Tensor]:
    """fp16 (scale, min) per group that (approximately) minimise the squared error.

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
                  for shrink in _RANGE_SHRINKS]
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


def _pack_nibbles(q: Tensor) -> Tensor:
    """[..., 32] values 0..15 → [..., 16] bytes: q[j] low nibble, q[j+16] high nibble."""
    return q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << 4)


# --------------------------------------------------------------------------------------------
# GGUF blocks → our buffers (numpy, on the raw bytes).

def _gguf_q8_0(blocks: np.ndarray, n: int, k: int) -> dict[str, np.ndarray]:
    scales = blocks[..., :2].copy().view(np.float16).reshape(n, k // BLOCK)
    q = blocks[..., 2:].copy().view(np.int8).reshape(n, k)
    # -128 never comes out of ggml's quantizer; AVX2's sign trick cannot represent it.
    np.maximum(q, -127, out=q)
    return {"qweight": q, "scales": scales}


def _gguf_q4_0(blocks: np.ndarray, n: int, k: int) -> dict[str, np.ndarray]:
    d = blocks[..., :2].copy().view(np.float16).reshape(n, k // BLOCK)
    mins = (d.astype(np.float32) * -8).astype(np.float16)  # exact: a power of two
    return {"qweight": blocks[..., 2:].reshape(n, k // 2), "scales": d, "mins": mins}


def _gguf_q4_1(blocks: np.ndarray, n: int, k: int) -> dict[str, np.ndarray]:
    d = blocks[..., :2].copy().view(np.float16).reshape(n, k // BLOCK)
    m = blocks[..., 2:4].copy().view(np.float16).reshape(n, k // BLOCK)
    return {"qweight": blocks[..., 4:].reshape(n, k // 2), "scales": d, "mins": m}


def _q4_k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins of Q4_K super-blocks from their 12 packed bytes [..., 12].

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the
    same for mins; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high).
    """
    p = packed.astype(np.uint8)
    sc_lo, m_lo, mixed = p[..., 0:4], p[..., 4:8], p[..., 8:12]
    scales = np.concatenate([sc_lo & 0x3F, (mixed & 0x0F) | ((sc_lo >> 6) << 4)], axis=-1)
    mins = np.concatenate([m_lo & 0x3F, (mixed >> 4) | ((m_lo >> 6) << 4)], axis=-1)
    return scales, mins


def _gguf_q4_k(blocks: np.ndarray, n: int, k: int) -> dict[str, np.ndarray]:
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)       # [n, S, 1]
    dmin = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    sc, m = _q4_k_scales_mins(blocks[..., 4:16])                          # [n, S, 8]
    scales = (d * sc.astype(np.float32)).astype(np.float16).reshape(n, k // BLOCK)
    mins = (-(dmin * m.astype(np.float32))).astype(np.float16).reshape(n, k // BLOCK)
    # Each run of 32 bytes holds two sub-blocks: low nibbles = the first 32 weights, high
    # nibbles = the next 32. Unpack to one value per byte, then repack in our order.
    runs = blocks[..., 16:].reshape(n, k // _QK_K, 4, 32)
    values = np.stack([runs & 0x0F, runs >> 4], axis=3).reshape(n, k // BLOCK, BLOCK)
    packed = values[..., :16] | (values[..., 16:] << 4)
    return {"qweight": packed.reshape(n, k // 2), "scales": scales, "mins": mins}


_GGUF_CONVERTERS = {"Q8_0": _gguf_q8_0, "Q4_0": _gguf_q4_0, "Q4_1": _gguf_q4_1,
                    "Q4_K": _gguf_q4_k}


# --------------------------------------------------------------------------------------------
# The layer.

class QuantLinear(nn.Module):
    """Drop-in replacement for nn.Linear with Q8 or Q4 weights (+ optional float32 bias).

    Inference only: inputs that need gradients take the dequantize path, so autograd works
    with respect to the input, but the quantized weights themselves are not trainable.
    `group_size` is informative: the int4 group, 32 for GGUF blocks, None for int8 per row.
    """

    def __init__(self, in_features: int, out_features: int, method: str = "int8",
                 bias: bool = False, group_size: int | None = None):
        super().__init__()
        _check_method(method)
        _check_in_features(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group_size = method, group_size
        blocks = (out_features, in_features // BLOCK)
        if method == "int8":
            self.register_buffer("qweight", torch.zeros(out_features, in_features,
                                                        dtype=torch.int8))
        else:
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2,
                                                        dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(blocks, dtype=torch.float16))
        if method == "int4":
            self.register_buffer("mins", torch.zeros(blocks, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"method={self.method}, group_size={self.group_size}, "
                f"bias={self.bias is not None}")

    def forward(self, x: Tensor) -> Tensor:
        # Decode calls this ~200 times per token, so it stays lean: the kernels take any
        # leading dimensions (no reshape/view here), buffers are read from `_buffers`
        # (nn.Module.__getattr__ costs ~1 µs each), no-op conversions are skipped.
        if x.shape[-1] != self.in_features:
            raise CentelhaError(f"input has {x.shape[-1]} features, the layer expects "
                                f"{self.in_features}")
        rows = x
        if rows.dtype is not torch.float32 or not rows.is_contiguous():
            rows = rows.to(torch.float32).contiguous()
        buffers = self._buffers
        kernels = load_kernels()
        if kernels is not None and _decode_sized(rows):
            if self.method == "int8":
                y = kernels.q8_matmul(rows, buffers["qweight"], buffers["scales"])
            else:
                y = kernels.q4_matmul(rows, buffers["qweight"], buffers["scales"],
                                      buffers["mins"])
        else:
            y = F.linear(rows, self.dequantize())
        bias = buffers["bias"]
        if bias is not None:
            y += bias
        return y if x.dtype is torch.float32 else y.to(x.dtype)

    def dequantize(self) -> Tensor:
        """The weight as float32 [out_features, in_features]."""
        if self.method == "int8":
            return dequantize_q8(self.qweight, self.scales)
        return dequantize_q4(self.qweight, self.scales, self.mins)

    @classmethod
    def from_linear(cls, linear: nn.Linear, method: str, group_size: int = 32) -> QuantLinear:
        """Quantize a float layer: int8 per output row, or int4 per group of `group_size`.

        group_size must be one of 32, 64, 128 (checked for int8 too, where it is unused, so a
        typo never passes silently).
        """
        _check_method(method)
        _check_group_size(group_size)
        _check_in_features(linear.in_features)
        weight = linear.weight.detach().float()
        if not torch.isfinite(weight).all():
            raise CentelhaError("cannot quantize a weight that contains NaN or infinity")
        layer = cls(linear.in_features, linear.out_features, method, linear.bias is not None,
                    group_size if method == "int4" else None)
        if method == "int8":
            layer.qweight, layer.scales = _quantize_int8_rows(weight)
        else:
            layer.qweight, layer.scales, layer.mins = _quantize_int4_groups(weight, group_size)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer

    @classmethod
    def from_gguf_blocks(cls, raw: np.ndarray, ggml_type: str, shape: tuple[int, int],
                         bias=None) -> QuantLinear:
        """A layer from a GGUF tensor's bytes: Q8_0, Q4_0 and Q4_1 blocks are copied, Q4_K
        super-blocks converted to 32-weight Q4 blocks. `shape` is (out, in) = (N, K), i.e.
        GGUF's (ne0, ne1) reversed."""
        name = str(getattr(ggml_type, "name", ggml_type)).upper()
        if name not in _GGUF_CONVERTERS:
            raise CentelhaError(f"GGUF type {ggml_type!r} is not supported here: use one of "
                                f"{GGUF_TYPES}")
        n, k = (int(v) for v in shape)
        _check_in_features(k, f"the {name} tensor")
        per_block = _GGUF_BLOCK_WEIGHTS[name]
        if k % per_block:
            raise CentelhaError(f"{name} rows must be a multiple of {per_block} weights, got {k}")
        data = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        expected = n * (k // per_block) * _GGUF_BLOCK_BYTES[name]
        if data.size != expected:
            raise CentelhaError(f"a {name} tensor of shape {(n, k)} has {expected} bytes, "
                                f"got {data.size}")
        blocks = data.reshape(n, k // per_block, _GGUF_BLOCK_BYTES[name])
        parts = _GGUF_CONVERTERS[name](blocks, n, k)
        method = "int8" if name == "Q8_0" else "int4"
        layer = cls(k, n, method, bias is not None, BLOCK)
        for buffer, array in parts.items():
            setattr(layer, buffer, torch.from_numpy(np.ascontiguousarray(array).copy()))
        if bias is not None:
            layer.bias = torch.as_tensor(np.asarray(bias), dtype=torch.float32).reshape(n).clone()
        return layer

    @classmethod
    def _from_state(cls, name: str, tensors: dict[str, Tensor],
                    group_size: int | None) -> QuantLinear:
        """A layer from the tensors `quantized_state` saved under `name.`, shapes checked."""
        for needed in ("qweight", "scales"):
            if f"{name}.{needed}" not in tensors:
                raise CentelhaError(f"quantized layer {name} has no saved {needed}")
        qweight = tensors[f"{name}.qweight"]
        method = "int4" if f"{name}.mins" in tensors else "int8"
        if qweight.dim() != 2 or qweight.dtype != (torch.int8 if method == "int8"
                                                   else torch.uint8):
            raise CentelhaError(f"{name}.qweight has the wrong shape or dtype for {method}")
        n = qweight.shape[0]
        k = qweight.shape[1] * (2 if method == "int4" else 1)
        bias = tensors.get(f"{name}.bias")
        layer = cls(k, n, method, bias is not None, group_size)
        for buffer in ("scales", "mins") if method == "int4" else ("scales",):
            value = tensors[f"{name}.{buffer}"]
            if value.dtype != torch.float16 or tuple(value.shape) != (n, k // BLOCK):
                raise CentelhaError(f"{name}.{buffer} must be float16 of shape {(n, k // BLOCK)}")
            setattr(layer, buffer, value.contiguous())
        if method == "int8" and bool((qweight == -128).any()):
            qweight = qweight.clamp(min=-127)  # see _gguf_q8_0
        layer.qweight = qweight.contiguous()
        if bias is not None:
            if tuple(bias.shape) != (n,):
                raise CentelhaError(f"{name}.bias must have shape {(n,)}")
            layer.bias = bias.float().contiguous()
        return layer


# --------------------------------------------------------------------------------------------
# Whole models.

def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return any(s in parts or name == s or name.startswith(s + ".") for s in skip)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


HEAD = "lm_head"


def quantize_model(model: nn.Module, method: str, group_size: int = 32,
                   skip: tuple[str, ...] = ("tok_emb", "pos_emb"),
                   head_method: str | None = "int8") -> nn.Module:
    """Replace every nn.Linear (except those named in `skip`) by a QuantLinear, in place.

    The LM head is quantized too, even when tied to the token embedding: it gets its own
    quantized copy and the embedding stays float (embedding rows are looked up, not
    multiplied, so their size costs memory but no decode time). The head uses
    `head_method` (int8 by default, None: the same as the rest): at 4 bits it alone cost
    SmolLM2-135M 5% perplexity, at 8 bits nothing measurable, as llama.cpp's formats also
    keep the output matrix at 6–8 bits. Returns `model`.
    """
    _check_method(method)
    _check_group_size(group_size)
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and not _skipped(name, skip)]
    for name, module in targets:  # check all before changing any: no half-quantized model
        _check_in_features(module.in_features, f"layer {name}")
    for name, module in targets:
        chosen = head_method if name == HEAD and head_method else method
        _replace(model, name, QuantLinear.from_linear(module, chosen, group_size))
    return model


def dequantize_model(model: nn.Module) -> int:
    """The inverse of `quantize_model`, for exporters: every QuantLinear becomes an
    nn.Linear holding its dequantized weight, in place, and a tied LM head is tied to the
    embedding again. Returns how many layers were replaced."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLinear)]
    for name, layer in layers:
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        linear.weight.data = layer.dequantize()
        if layer.bias is not None:
            linear.bias.data = layer.bias.detach().float().clone()
        _replace(model, name, linear)
    if model.cfg.tie_embeddings and layers:
        model.lm_head.weight = model.tok_emb.weight
    model.cfg.extra.pop("quantization", None)
    return len(layers)


def quantized_state(model: nn.Module) -> tuple[dict[str, Tensor], dict]:
    """Tensors to save with safetensors (every parameter and buffer of the model, quantized
    layers included) and a JSON-able description: {"method", "group_size", "layers"}, plus
    "aliases" {name: saved name} for tensors shared between modules (saved once)."""
    layers = sorted(name for name, m in model.named_modules() if isinstance(m, QuantLinear))
    if not layers:
        raise CentelhaError("the model has no quantized layers: run quantize_model first")
    # the method of the transformer blocks (the head may differ: see quantize_model)
    methods = {model.get_submodule(name).method for name in layers if name != HEAD} or \
        {model.get_submodule(name).method for name in layers}
    groups = {model.get_submodule(name).group_size for name in layers if name != HEAD} or \
        {model.get_submodule(name).group_size for name in layers}
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, value in model.state_dict().items():
        value = value.detach()
        storage = value.untyped_storage().data_ptr()
        view = (storage, value.storage_offset(), tuple(value.shape), tuple(value.stride()),
                value.dtype)
        if view in views:  # the same tensor under two names (tied weights): save it once
            aliases[key] = views[view]
            continue
        views[view] = key
        # safetensors refuses tensors that share memory, so a part of a shared buffer is copied.
        tensors[key] = value.clone() if storage in storages else value.contiguous()
        storages.add(storage)
    description: dict = {
        "method": methods.pop() if len(methods) == 1 else "mixed",
        "group_size": groups.pop() if len(groups) == 1 else None,
        "layers": layers,
    }
    if aliases:
        description["aliases"] = aliases
    return tensors, description


def apply_quantized_state(model: nn.Module, tensors: dict[str, Tensor], description: dict) -> None:
    """The inverse of `quantized_state`: swap the modules named in `description["layers"]` for
    QuantLinear layers holding the saved blocks, and load every other tensor into `model`."""
    layers = description.get("layers") if isinstance(description, dict) else None
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise CentelhaError("quantization description has no list of layers")
    tensors = dict(tensors)
    for alias, source in (description.get("aliases") or {}).items():
        if source not in tensors:
            raise CentelhaError(f"tensor {alias} refers to {source}, which is not saved")
        tensors[alias] = tensors[source]
    group_size = description.get("group_size")
    for name in layers:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CentelhaError(f"the model has no layer {name} to quantize") from None
        if not isinstance(module, (nn.Linear, QuantLinear)):
            raise CentelhaError(f"{name} is a {type(module).__name__}, not a linear layer")
        layer = QuantLinear._from_state(name, tensors, group_size)
        if (layer.in_features, layer.out_features) != (module.in_features, module.out_features):
            raise CentelhaError(f"{name} is {module.in_features}→{module.out_features} in the "
                                f"model, {layer.in_features}→{layer.out_features} in the file")
        _replace(model, name, layer)
    own = {f"{name}.{b}" for name in layers for b in ("qweight", "scales", "mins", "bias")}
    rest = {k: v for k, v in tensors.items() if k not in own}
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if k not in own]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise CentelhaError(f"the quantized weights do not match the model: {detail}")
