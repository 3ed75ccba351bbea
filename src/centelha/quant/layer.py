"""`QuantLinear`: a drop-in nn.Linear whose weight is int8 or int4 blocks.

The layer holds the buffers of `blocks.py` (qweight, scales, and mins for int4) plus an
optional float32 bias, and is built three ways: from a float `nn.Linear` (`from_linear`),
from a GGUF tensor's bytes (`from_gguf_blocks`), or empty, to be filled from a saved
checkpoint (`state.py`). Its forward is the hot loop of quantized decoding, so it calls
the kernels itself rather than through `matmul.q8_matmul` (see the comment in `forward`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from centelha.errors import CentelhaError
from centelha.kernels import load_kernels
from centelha.quant.blocks import (
    BLOCK,
    check_group_size,
    check_in_features,
    check_method,
    quantize_int4_groups,
    quantize_int8_rows,
)
from centelha.quant.gguf_blocks import gguf_buffers
from centelha.quant.matmul import decode_sized, dequantize_q4, dequantize_q8


class QuantLinear(nn.Module):
    """Drop-in replacement for nn.Linear with Q8 or Q4 weights (+ optional float32 bias).

    Inference only: inputs that need gradients take the dequantize path, so autograd works
    with respect to the input, but the quantized weights themselves are not trainable.
    `group_size` is informative: the int4 group, 32 for GGUF blocks, None for int8 per row.
    """

    def __init__(self, in_features: int, out_features: int, method: str = "int8",
                 bias: bool = False, group_size: int | None = None):
        super().__init__()
        check_method(method)
        check_in_features(in_features)
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
        if kernels is not None and decode_sized(rows):
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
        check_method(method)
        check_group_size(group_size)
        check_in_features(linear.in_features)
        weight = linear.weight.detach().float()
        if not torch.isfinite(weight).all():
            raise CentelhaError("cannot quantize a weight that contains NaN or infinity")
        layer = cls(linear.in_features, linear.out_features, method, linear.bias is not None,
                    group_size if method == "int4" else None)
        if method == "int8":
            layer.qweight, layer.scales = quantize_int8_rows(weight)
        else:
            layer.qweight, layer.scales, layer.mins = quantize_int4_groups(weight, group_size)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer

    @classmethod
    def from_gguf_blocks(cls, raw: np.ndarray, ggml_type: str, shape: tuple[int, int],
                         bias=None) -> QuantLinear:
        """A layer from a GGUF tensor's bytes: Q8_0, Q4_0 and Q4_1 blocks are copied, Q4_K
        super-blocks converted to 32-weight Q4 blocks. `shape` is (out, in) = (N, K), i.e.
        GGUF's (ne0, ne1) reversed."""
        method, parts = gguf_buffers(raw, ggml_type, shape)
        n, k = (int(v) for v in shape)
        layer = cls(k, n, method, bias is not None, BLOCK)
        for buffer, array in parts.items():
            setattr(layer, buffer, torch.from_numpy(np.ascontiguousarray(array).copy()))
        if bias is not None:
            layer.bias = torch.as_tensor(np.asarray(bias), dtype=torch.float32).reshape(n).clone()
        return layer
