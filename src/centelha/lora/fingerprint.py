"""`base_fingerprint`: a cheap, stable hash that says which base weights an adapter fits.

An adapter is only meaningful on the weights it was trained against, so adapter.json
records this hash and `load_adapter` refuses a model whose hash differs. It has to be
cheap (it runs on every load, over models of hundreds of MB) and stable across the ways
one base is held in memory; it is an identity check, not an integrity check.

What is hashed (sha256): for each tensor of the model's state dict in sorted name order,
its name, its shape, and 4,096 evenly spaced values (all of them when fewer), rounded to
bfloat16. The names are those of the bare base: LoRA's own A and B are left out and a
wrapped layer's "x.base.weight" counts as "x.weight", so the hash is the same before and
after `apply_lora`. The rounding makes the same weights held in float32 or bfloat16 hash
alike; a quantized model holds other tensors (qweight, scales) and is a different base.
A merged adapter changes the base weights it is folded into, so the hash is taken when
an adapter is attached (`apply_lora` records it as `model.lora_base_hash`) and saved from
there, not recomputed from a model that may be merged.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from centelha.lora.layer import LoRALinear

SAMPLES_PER_TENSOR = 4096
ADAPTER_TENSORS = ("lora_A", "lora_B")


def base_fingerprint(model: nn.Module) -> str:
    """"sha256:<hex>" over the base weights' names, shapes and sampled values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(base_tensors(model).items()):
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(sampled_bytes(tensor))
    return "sha256:" + digest.hexdigest()


def base_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict as the bare base would name it (see the module notes)."""
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    tensors = {}
    for key, value in model.state_dict().items():
        owner = next((w for w in wrapped if key.startswith(w + ".")), None)
        if owner is not None:
            rest = key[len(owner) + 1:]
            if rest in ADAPTER_TENSORS:
                continue
            key = f"{owner}.{rest.removeprefix('base.')}"
        tensors[key] = value
    return tensors


def sampled_bytes(tensor: Tensor) -> bytes:
    """The bytes of up to SAMPLES_PER_TENSOR evenly spaced values, as bfloat16."""
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    if n > SAMPLES_PER_TENSOR:
        flat = flat[torch.arange(SAMPLES_PER_TENSOR, device=flat.device) * n
                    // SAMPLES_PER_TENSOR]
    return flat.cpu().to(torch.bfloat16).view(torch.int16).numpy().tobytes()
