"""A quantized model as tensors plus a description, and back: what checkpoints save.

`quantized_state` gives every parameter and buffer of the model (the quantized layers'
blocks included) for safetensors, and a JSON-able description for config.json:
{"method", "group_size", "layers"}, plus "aliases" for tensors shared between modules.
`apply_quantized_state` rebuilds the quantized layers of a fresh float model from them.

Why aliases: a tied embedding and head (or any shared tensor) would be saved twice, and
safetensors refuses tensors that share memory, so each is saved once under its first name
and the others point to it. Everything read back is checked (names, dtypes, shapes) and
refused with one line, since the file may be corrupt or not ours.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from centelha.errors import CentelhaError
from centelha.quant.blocks import BLOCK
from centelha.quant.layer import QuantLinear
from centelha.quant.whole_model import HEAD, replace_module

LAYER_BUFFERS = ("qweight", "scales", "mins", "bias")


def quantized_state(model: nn.Module) -> tuple[dict[str, Tensor], dict]:
    """Tensors to save with safetensors (every parameter and buffer of the model, quantized
    layers included) and a JSON-able description: {"method", "group_size", "layers"}, plus
    "aliases" {name: saved name} for tensors shared between modules (saved once)."""
    layers = sorted(name for name, m in model.named_modules() if isinstance(m, QuantLinear))
    if not layers:
        raise CentelhaError("the model has no quantized layers: run quantize_model first")
    tensors, aliases = _tensors_saved_once(model)
    description: dict = {**_summary(model, layers), "layers": layers}
    if aliases:
        description["aliases"] = aliases
    return tensors, description


def _summary(model: nn.Module, layers: list[str]) -> dict:
    """The method and group size of the transformer blocks ("mixed" / None when they
    differ); the head, which may differ (see quantize_model), counts only when alone."""
    modules = [model.get_submodule(name) for name in layers if name != HEAD] or \
        [model.get_submodule(name) for name in layers]
    methods = {m.method for m in modules}
    groups = {m.group_size for m in modules}
    return {"method": methods.pop() if len(methods) == 1 else "mixed",
            "group_size": groups.pop() if len(groups) == 1 else None}


def _tensors_saved_once(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The model's state as {name: tensor} with each shared tensor once, and the aliases
    {other name: saved name} of the rest."""
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
    return tensors, aliases


def apply_quantized_state(model: nn.Module, tensors: dict[str, Tensor], description: dict) -> None:
    """The inverse of `quantized_state`: swap the modules named in `description["layers"]` for
    QuantLinear layers holding the saved blocks, and load every other tensor into `model`."""
    layers = description.get("layers") if isinstance(description, dict) else None
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise CentelhaError("quantization description has no list of layers")
    tensors = _with_aliases(tensors, description.get("aliases") or {})
    group_size = description.get("group_size")
    for name in layers:
        replace_module(model, name, _saved_layer_for(model, name, tensors, group_size))
    own = {f"{name}.{b}" for name in layers for b in LAYER_BUFFERS}
    rest = {k: v for k, v in tensors.items() if k not in own}
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if k not in own]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise CentelhaError(f"the quantized weights do not match the model: {detail}")


def _with_aliases(tensors: dict[str, Tensor], aliases: dict[str, str]) -> dict[str, Tensor]:
    tensors = dict(tensors)
    for alias, source in aliases.items():
        if source not in tensors:
            raise CentelhaError(f"tensor {alias} refers to {source}, which is not saved")
        tensors[alias] = tensors[source]
    return tensors


def _saved_layer_for(model: nn.Module, name: str, tensors: dict[str, Tensor],
                     group_size: int | None) -> QuantLinear:
    """The saved layer `name`, checked to fit the linear layer it replaces in `model`."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise CentelhaError(f"the model has no layer {name} to quantize") from None
    if not isinstance(module, (nn.Linear, QuantLinear)):
        raise CentelhaError(f"{name} is a {type(module).__name__}, not a linear layer")
    layer = saved_layer(name, tensors, group_size)
    if (layer.in_features, layer.out_features) != (module.in_features, module.out_features):
        raise CentelhaError(f"{name} is {module.in_features}→{module.out_features} in the "
                            f"model, {layer.in_features}→{layer.out_features} in the file")
    return layer


def saved_layer(name: str, tensors: dict[str, Tensor], group_size: int | None) -> QuantLinear:
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
    layer = QuantLinear(k, n, method, bias is not None, group_size)
    for buffer in ("scales", "mins") if method == "int4" else ("scales",):
        value = tensors[f"{name}.{buffer}"]
        if value.dtype != torch.float16 or tuple(value.shape) != (n, k // BLOCK):
            raise CentelhaError(f"{name}.{buffer} must be float16 of shape {(n, k // BLOCK)}")
        setattr(layer, buffer, value.contiguous())
    if method == "int8" and bool((qweight == -128).any()):
        qweight = qweight.clamp(min=-127)  # as for GGUF's Q8_0 (see gguf_blocks.q8_0)
    layer.qweight = qweight.contiguous()
    if bias is not None:
        if tuple(bias.shape) != (n,):
            raise CentelhaError(f"{name}.bias must have shape {(n,)}")
        layer.bias = bias.float().contiguous()
    return layer
