"""`apply_lora`: wrap a model's chosen linear layers in `LoRALinear` and freeze the rest.

Targets are module-name patterns, matched against the names `named_modules()` gives
("blocks.3.attn.qkv"), and only linear layers (nn.Linear or QuantLinear) are candidates:
- a pattern with a wildcard (`*`, `?`, `[`) is an fnmatch pattern over the whole name:
  "blocks.[01].*" adapts every linear layer of the first two blocks;
- any other pattern matches as a dotted suffix: "qkv" matches "blocks.0.attn.qkv",
  "attn.proj" matches "blocks.5.attn.proj", "lm_head" the head.
A pattern that matches no linear layer is refused (a typo would otherwise train nothing).

Design choices:
- Our fused projections get one adapter each: `attn.qkv` (rows q, then k, then v) and
  SwiGLU's `mlp.fc_in` (rows gate, then up). A rank-r adapter over the fused layer is not
  the same model as three rank-r adapters over q, k, v (it shares A across them), but it
  is one product instead of three, and it exports exactly: PEFT's q/k/v adapters are A
  repeated for each and B split by rows (see the export notes in the package docstring).
- Every parameter that is not an adapter's A or B is frozen, embeddings, norms and a
  classifier head included; an objective that trains a head unfreezes it afterwards.
- The config is returned and recorded on the model as `model.lora_config`, and the base's
  `base_fingerprint` as `model.lora_base_hash` (taken before any merge can change the
  weights): what `save_adapter` writes beside the tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fnmatch import fnmatchcase

from torch import nn

from centelha.errors import CentelhaError
from centelha.lora.config import DEFAULT_TARGETS, LoRAConfig
from centelha.lora.fingerprint import base_fingerprint
from centelha.lora.layer import LoRALinear
from centelha.quant import QuantLinear
from centelha.quant.whole_model import replace_module

WILDCARDS = ("*", "?", "[")


def matches(name: str, pattern: str) -> bool:
    """Whether module `name` is selected by `pattern` (fnmatch with wildcards, else a
    dotted suffix; see the module notes)."""
    if any(w in pattern for w in WILDCARDS):
        return fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def target_names(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The names of the linear layers the patterns select, in model order; a pattern that
    selects none is refused."""
    linears = [name for name, m in model.named_modules()
               if isinstance(m, (nn.Linear, QuantLinear))]
    for pattern in targets:
        if not any(matches(name, pattern) for name in linears):
            raise CentelhaError(f"LoRA target {pattern!r} matches no linear layer (they are "
                                f"named like {linears[0]!r})" if linears else
                                "the model has no linear layers for LoRA")
    return [name for name in linears if any(matches(name, p) for p in targets)]


def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float = 0.0,
               targets: tuple[str, ...] = DEFAULT_TARGETS, rslora: bool = False) -> LoRAConfig:
    """Wrap the layers `targets` selects in LoRALinear, in place, and freeze every other
    parameter. Returns the config, also recorded as `model.lora_config`."""
    return apply_config(model, LoRAConfig(r=r, alpha=alpha, dropout=dropout,
                                          targets=tuple(targets), rslora=rslora))


def apply_config(model: nn.Module, config: LoRAConfig) -> LoRAConfig:
    """`apply_lora` from a ready config (what `load_adapter` uses)."""
    if has_lora(model):
        raise CentelhaError("the model already has LoRA adapters; load or apply one at a time")
    names = target_names(model, config.targets)  # checked before anything changes
    base_hash = base_fingerprint(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        layer = LoRALinear(model.get_submodule(name), config.r, config.scale, config.dropout)
        replace_module(model, name, layer.train(model.training))  # dropout follows the model
    model.lora_config, model.lora_base_hash = config, base_hash
    return config


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(name, layer) for every LoRALinear of `model`, in model order."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' A and B matrices: what an optimizer for a LoRA run gets."""
    return [p for _, layer in lora_layers(model) for p in (layer.lora_A, layer.lora_B)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base (DPO's reference model); merged
    adapters are unmerged for the block and merged again after."""
    layers = [layer for _, layer in lora_layers(model)]
    states = [(layer.enabled, layer.merged) for layer in layers]
    for layer in layers:
        layer.unmerge()
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, (enabled, merged) in zip(layers, states, strict=True):
            layer.enabled = enabled
            if merged:
                layer.merge()
