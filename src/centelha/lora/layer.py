"""`LoRALinear`: a frozen linear layer plus a trainable low-rank update.

    y = base(x) + scale · B(A(dropout(x)))        A: [r, in], B: [out, r]

The base is an `nn.Linear` or a `centelha.quant.QuantLinear` (int8/int4/GGUF blocks) and
never trains; only `lora_A` and `lora_B` do. The update is computed as two thin matrix
products (x·Aᵀ then ·Bᵀ), never as the dense [out, in] matrix B·A, which is what keeps a
rank-8 adapter on a 2-core CPU nearly as cheap as the base layer alone.

Design choices:
- A starts Kaiming-uniform (the bound nn.Linear uses, 1/sqrt(in)) and B at zero, so a
  fresh adapter changes nothing (B = 0 gives the base's output exactly) while A already
  passes a useful gradient to B on the first step.
- A and B are float32 for a quantized base (its blocks have no float dtype to follow),
  and the base weight's dtype and device otherwise.
- `merge` adds scale·B·A into a float base weight in place and remembers the exact delta
  it added, so `unmerge` subtracts the same numbers (equal to the original within float
  rounding, ~1e-7 relative). A quantized base refuses to merge in place: adding a float
  delta to int8/int4 blocks would re-quantize and lose the update; `merge.merged_model`
  dequantizes into a new float layer instead.
- `enabled = False` skips the update without touching weights: the reference model for
  DPO is the base with adapters off, with no second copy in memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from centelha.errors import CentelhaError
from centelha.quant import QuantLinear

BaseLinear = nn.Linear | QuantLinear


class LoRALinear(nn.Module):
    """`base` (frozen) plus `scale · lora_B(lora_A(dropout(x)))`; see the module notes."""

    def __init__(self, base: BaseLinear, r: int, scale: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, QuantLinear)):
            raise CentelhaError(f"LoRA wraps nn.Linear or QuantLinear layers, not "
                                f"{type(base).__name__}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.scale = r, scale
        dtype, device = adapter_dtype_device(base)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=dtype, device=device))
        # the bound nn.Linear uses for its own weight: uniform in ±1/sqrt(in_features)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        self._merged_delta: Tensor | None = None  # what merge added, for unmerge

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def merged(self) -> bool:
        return self._merged_delta is not None

    def extra_repr(self) -> str:
        return f"r={self.r}, scale={self.scale:g}, merged={self.merged}"

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if not self.enabled or self.merged:  # merged: the update is inside the base weight
            return y
        # scale the thin [.., r] product, and let one addmm add ·Bᵀ onto the base output:
        # scaling or adding the wide [.., out] product costs a full pass over it each
        # (and again in backward): 1-13% of a layer's forward + backward on 2 cores
        low = (self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()) * self.scale
        if y.dtype != low.dtype:
            return y + (low @ self.lora_B.t()).to(y.dtype)
        flat = torch.addmm(y.reshape(-1, y.shape[-1]), low.reshape(-1, low.shape[-1]),
                           self.lora_B.t())
        return flat.view(y.shape)

    def delta_weight(self) -> Tensor:
        """scale · B·A, the [out, in] matrix the adapter adds to the base weight (float32
        at least, so bf16 adapters merge without a second rounding)."""
        dtype = torch.promote_types(self.lora_A.dtype, torch.float32)
        return self.scale * (self.lora_B.detach().to(dtype) @ self.lora_A.detach().to(dtype))

    def merge(self) -> None:
        """Add the update into the float base weight, in place; forward then skips it."""
        if self.merged:
            return
        if isinstance(self.base, QuantLinear):
            raise CentelhaError(f"cannot merge LoRA into a {self.base.method} quantized layer "
                                "in place; merged_model(model) returns dequantized float weights")
        weight = self.base.weight
        delta = self.delta_weight().to(weight.dtype)
        with torch.no_grad():
            weight += delta
        self._merged_delta = delta

    def unmerge(self) -> None:
        """Subtract exactly what `merge` added; the adapter acts from forward again."""
        if not self.merged:
            return
        with torch.no_grad():
            self.base.weight -= self._merged_delta
        self._merged_delta = None

    def merged_linear(self) -> nn.Linear:
        """A new plain nn.Linear holding base + scale·B·A (a quantized base dequantized to
        float32); this layer is left as it is."""
        base = self.base
        if self.merged:  # the base weight already holds the update
            merged_weight = base.weight.detach()
        else:
            weight = base.dequantize() if isinstance(base, QuantLinear) else base.weight.detach()
            delta = self.delta_weight()
            merged_weight = (weight.to(delta.dtype) + delta).to(weight.dtype)
        bias = base.bias
        linear = nn.Linear(self.in_features, self.out_features, bias=bias is not None,
                           dtype=merged_weight.dtype, device=merged_weight.device)
        linear.weight.data.copy_(merged_weight)
        if bias is not None:
            linear.bias.data.copy_(bias.detach())
        return linear


def adapter_dtype_device(base: BaseLinear) -> tuple[torch.dtype, torch.device]:
    """The dtype and device A and B take next to `base` (float32 for quantized blocks)."""
    if isinstance(base, QuantLinear):
        return torch.float32, base.qweight.device
    return base.weight.dtype, base.weight.device
