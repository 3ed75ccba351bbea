"""Folding adapters into weights: `merge` / `unmerge` in place, `merged_model` as a copy.

`merge(model)` adds scale·B·A into every adapted float weight and `unmerge(model)` takes
it out again (see `LoRALinear.merge`); in between the model computes the same logits at
the cost of the base alone. `merged_model(model)` returns a new plain model with the
updates folded in and no LoRA wrappers, ready to save, export, serve or quantize like any
other; the adapted model is left untouched.

Design choices:
- A quantized base refuses `merge` in place (adding a float delta to int8/int4 blocks
  would re-quantize it and lose most of a small update); `merged_model` dequantizes each
  adapted layer into a float32 nn.Linear instead, and layers without an adapter stay as
  they are (quantize the result again to get a uniformly quantized model).
- `merge` checks every layer before changing any, so a refusal never leaves a
  half-merged model; a head tied to the token embedding refuses too, since adding into
  it would change the embedding as well. `merged_model` unties such a head in the copy.
"""

from __future__ import annotations

import copy
import dataclasses

from torch import nn

from centelha.errors import CentelhaError
from centelha.lora.inject import lora_layers
from centelha.quant import QuantLinear
from centelha.quant.whole_model import HEAD, replace_module


def merge(model: nn.Module) -> int:
    """Fold every adapter into its float base weight, in place. Returns how many."""
    layers = list(lora_layers(model))
    for name, layer in layers:  # all checked before any changes
        if isinstance(layer.base, QuantLinear):
            raise CentelhaError(f"cannot merge LoRA into quantized layer {name} "
                                f"({layer.base.method}) in place; use merged_model(model)")
        if _shares_weight(model, layer.base):
            raise CentelhaError(f"cannot merge LoRA into {name} in place: its weight is tied "
                                "to another layer; use merged_model(model)")
    for _, layer in layers:
        layer.merge()
    return len(layers)


def unmerge(model: nn.Module) -> int:
    """Undo `merge`: every merged adapter acts from forward again. Returns how many."""
    layers = [layer for _, layer in lora_layers(model) if layer.merged]
    for layer in layers:
        layer.unmerge()
    return len(layers)


def merged_model(model: nn.Module) -> nn.Module:
    """A copy of `model` whose adapted layers are plain nn.Linear holding base + scale·B·A,
    with no LoRA wrappers and nothing frozen; `model` itself is unchanged."""
    return fold_adapters(copy.deepcopy(model))


def fold_adapters(merged: nn.Module) -> nn.Module:
    """`merged_model` in place: for a model whose unmerged form is not needed again (a
    model loaded with an adapter), without a second copy of every weight in memory."""
    replaced = list(lora_layers(merged))
    for name, layer in replaced:
        replace_module(merged, name, layer.merged_linear())
    if HEAD in (name for name, _ in replaced):
        _untie_head(merged)
    for attribute in ("lora_config", "lora_base_hash"):
        merged.__dict__.pop(attribute, None)
    merged.requires_grad_(True)
    return merged


def _shares_weight(model: nn.Module, base: nn.Module) -> bool:
    """Whether another module of `model` holds the same weight tensor as `base`."""
    weight = getattr(base, "weight", None)
    return weight is not None and any(
        m is not base and getattr(m, "weight", None) is weight for m in model.modules())


def _untie_head(model: nn.Module) -> None:
    """A Transformer whose tied head got a merged weight of its own is no longer tied:
    say so in its config (every module holding it), which the checkpoint writer follows."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not getattr(cfg, "tie_embeddings", False):
        return
    untied = dataclasses.replace(cfg, tie_embeddings=False)
    for module in model.modules():
        if getattr(module, "cfg", None) is cfg:
            module.cfg = untied
