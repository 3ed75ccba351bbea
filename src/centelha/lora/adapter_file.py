"""Adapters on disk, apart from their base: `save_adapter` and `load_adapter`.

A folder holds two files:
- `adapter.safetensors`: for each adapted layer `<name>.lora_A` [r, in] and
  `<name>.lora_B` [out, r], with centelha's module names ("blocks.0.attn.qkv");
- `adapter.json`: {"format": "centelha-lora", "version": 1, "r", "alpha", "dropout",
  "rslora", "targets", "modules" (the adapted layers), "base" (the base's name, as the
  user knows it: a registry name or a folder), "base_hash" (`fingerprint.base_fingerprint`)}.

Design choices:
- Both files are written atomically, the tensors first, so an adapter.json on disk always
  describes a complete tensors file beside it.
- Loading checks everything before the model changes: the JSON's fields, the tensor names
  against `modules`, each shape against the model's layer, then the base hash, and any
  mismatch is one line naming what the adapter expects and what the model has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from centelha.atomic import atomic_write, atomic_write_text
from centelha.errors import CentelhaError
from centelha.jsonfile import read_json_object
from centelha.lora.config import LoRAConfig
from centelha.lora.fingerprint import base_fingerprint
from centelha.lora.inject import (
    apply_config,
    has_lora,
    lora_layers,
    target_names,
)

FORMAT, VERSION = "centelha-lora", 1
TENSORS_FILE, CONFIG_FILE = "adapter.safetensors", "adapter.json"


def save_adapter(model: nn.Module, folder: str | Path, base_name: str,
                 tensors: dict[str, Tensor] | None = None) -> Path:
    """Write the model's adapters (A and B only) and their description to `folder`.
    `tensors`: the A and B values to write, by the same names, when the model's own are
    not whole here (sharded by FSDP: the training state holds them gathered)."""
    config, base_hash = (getattr(model, a, None) for a in ("lora_config", "lora_base_hash"))
    layers = list(lora_layers(model))
    if config is None or base_hash is None or not layers:
        raise CentelhaError("the model has no LoRA adapters to save: run apply_lora first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{name}.{part}" for name, _ in layers for part in ("lora_A", "lora_B")]
    if tensors is None:
        tensors = {f"{name}.{part}": getattr(layer, part).detach().cpu().contiguous().clone()
                   for name, layer in layers for part in ("lora_A", "lora_B")}
    else:
        tensors = {n: tensors[n].detach().cpu().contiguous() for n in names}
    description = {"format": FORMAT, "version": VERSION, **config.to_dict(),
                   "modules": [name for name, _ in layers], "base": str(base_name),
                   "base_hash": base_hash}  # taken by apply_lora, before any merge
    atomic_write(folder / TENSORS_FILE,
                 lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(description, indent=2) + "\n")
    return folder


def load_adapter(model: nn.Module, folder: str | Path) -> LoRAConfig:
    """Apply the adapter saved in `folder` to `model` (its base, without LoRA), in place.
    Returns the config; a mismatched base or a malformed folder → one-line CentelhaError."""
    folder = Path(folder)
    if has_lora(model):
        raise CentelhaError("the model already has LoRA adapters; load an adapter onto its base")
    description = read_description(folder / CONFIG_FILE)
    config = LoRAConfig.from_dict(description, source=str(folder / CONFIG_FILE))
    tensors = read_tensors(folder / TENSORS_FILE)
    check_modules(model, config, description, folder)
    check_tensors(model, config, description["modules"], tensors, folder)
    check_base(model, description, folder)
    apply_config(model, config)
    with torch.no_grad():
        for name, layer in lora_layers(model):
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])
    return config


def read_description(path: Path) -> dict[str, Any]:
    """adapter.json's object, its own fields checked (the LoRA fields: `LoRAConfig`)."""
    description = read_json_object(path)
    if description.get("format") != FORMAT:
        raise CentelhaError(f"{path} is not a centelha LoRA adapter (format "
                            f"{description.get('format')!r}, expected {FORMAT!r})")
    if description.get("version") != VERSION:
        raise CentelhaError(f"{path} has adapter version {description.get('version')!r}; "
                            f"this centelha reads version {VERSION}")
    for key in ("base", "base_hash"):
        if not isinstance(description.get(key), str):
            raise CentelhaError(f"{path}: {key!r} must be a string")
    modules = description.get("modules")
    if not isinstance(modules, list) or not modules or \
            not all(isinstance(m, str) for m in modules):
        raise CentelhaError(f"{path}: 'modules' must be a non-empty list of layer names")
    return description


def read_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CentelhaError(f"file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CentelhaError(f"{path} is not a valid safetensors file: {e}") from None


def check_modules(model: nn.Module, config: LoRAConfig, description: dict, folder: Path) -> None:
    """The adapter's targets select, in this model, exactly the layers it was saved from."""
    found = target_names(model, config.targets)
    if found != description["modules"]:
        raise CentelhaError(f"adapter {folder} adapts {len(description['modules'])} layers "
                            f"(base {description['base']!r}); its targets select "
                            f"{len(found)} in this model: a different architecture")


def check_tensors(model: nn.Module, config: LoRAConfig, modules: list[str],
                  tensors: dict[str, Tensor], folder: Path) -> None:
    """One A [r, in] and one B [out, r] per module, floating point, and nothing else."""
    expected = {f"{m}.{part}" for m in modules for part in ("lora_A", "lora_B")}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CentelhaError(f"adapter {folder}: {TENSORS_FILE} does not match "
                            f"{CONFIG_FILE}: {detail}")
    for name in modules:
        layer = model.get_submodule(name)
        shapes = {"lora_A": (config.r, layer.in_features),
                  "lora_B": (layer.out_features, config.r)}
        for part, shape in shapes.items():
            tensor = tensors[f"{name}.{part}"]
            if tuple(tensor.shape) != shape or not tensor.is_floating_point():
                raise CentelhaError(f"adapter {folder}: {name}.{part} is {tensor.dtype} "
                                    f"{tuple(tensor.shape)}, this model's layer needs "
                                    f"floating point {shape}")


def check_base(model: nn.Module, description: dict, folder: Path) -> None:
    """The model's weights are the ones the adapter was trained on (same hash)."""
    expected, actual = description["base_hash"], base_fingerprint(model)
    if expected != actual:
        raise CentelhaError(f"adapter {folder} was trained on base {description['base']!r} "
                            f"(weights {_short(expected)}); this model's weights are "
                            f"{_short(actual)}: a different base")


def _short(digest: str) -> str:
    return digest[:len("sha256:") + 12]
