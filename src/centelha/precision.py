"""Which precision to train in: fp32, or bf16 autocast where the hardware makes it pay.

`train.precision: auto` picks per machine, and says why:
- a CUDA GPU: bf16 autocast (tensor cores; the loop also enables TF32);
- a CPU with AMX (Intel Xeon 4th generation and later: `amx_bf16` in /proc/cpuinfo):
  bf16 autocast, because its tile units multiply bf16 matrices 3-5x faster than fp32
  (measured on a 2-core such VM: SmolLM2-shaped training 339 vs 208 tokens/s);
- a CPU with AVX-512 BF16 (`avx512_bf16`, e.g. AMD EPYC Zen 4): bf16 autocast too, for
  its native bf16 dot products (measured on a 2-core such VM: SmolLM2-shaped full
  training 266 vs 161 tokens/s, LoRA 273 vs 208);
- any other CPU: fp32, because without native bf16 arithmetic autocast only adds casts.
`fp32` and `bf16` force the choice. Weights and optimizer state stay fp32 either way;
autocast runs the matrix products in bf16.
"""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return frozenset()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16() -> str | None:
    """The CPU feature that multiplies bf16 natively, if there is one."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX (bf16 matrix tiles)"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    return None


def resolve_precision(setting: str, device: torch.device) -> tuple[str, str]:
    """("fp32" | "bf16", why), for `train.precision` on `device`."""
    if setting != "auto":
        return setting, "as configured"
    if device.type == "cuda":
        return "bf16", "auto: a CUDA GPU"
    feature = native_bf16() if device.type == "cpu" else None
    if feature:
        return "bf16", f"auto: this CPU has {feature}"
    return "fp32", "auto: this CPU has no native bf16 arithmetic, where autocast is slower"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the forward pass runs in."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
