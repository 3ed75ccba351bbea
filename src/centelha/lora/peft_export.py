"""PEFT export: a model's LoRA adapters as a folder `peft.PeftModel.from_pretrained` loads.

    export_peft(model, "export/sft-peft", base_model_name_or_path="HuggingFaceTB/...")

The folder holds `adapter_config.json` (peft_type LORA, task_type CAUSAL_LM, r,
lora_alpha, lora_dropout, use_rslora, target_modules, bias "none") and
`adapter_model.safetensors`, whose tensors are named like PEFT saves them:
`base_model.model.<Hugging Face module>.lora_A.weight` [r, in] and `.lora_B.weight`
[out, r]. It is meant for the base exported by `centelha.formats.hf.save_hf`, or the
Hugging Face model the base was imported from: the same names, the same weights.

Design choices:
- Module names come from the Hugging Face name table (`formats/hf/names.py`), the one
  `save_hf` writes the base with, so the adapter and its base cannot disagree. Our layer
  `blocks.3.attn.qkv` is the table's row for `blocks.3.attn.qkv.weight`, and that row's
  Hugging Face names, less `.weight`, are the modules PEFT adapts.
- A row's transform moves output rows (a split of fused q|k|v or gate|up, or a rotary
  row order), so it applies to B [out, r] as it does to the weight, and A [r, in] is the
  same for every part: the update B·A of each part is then exactly that part's rows of
  ours. The Llama layout keeps Hugging Face's rotary order, so nothing is permuted there.
  GPT-2's transposed `Conv1D` is the one exception: PEFT stores A and B of a Conv1D as of
  a Linear and transposes the product itself (`fan_in_fan_out`), so B goes as it is.
- `target_modules` is the list of leaf names ("q_proj", "o_proj", …) when those select
  exactly the adapted modules; otherwise (say, only some blocks were adapted) it is a
  regex matching just their full names, which PEFT matches whole. Either way PEFT builds
  the adapters the file holds and no others, so loading reports no missing keys.
- Refused, in one line: a model without adapters, a merged one (its update is inside the
  base weights, and an export would apply it twice), and a LoRA head tied to the token
  embedding (PEFT merging it would change the embedding too).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from centelha.atomic import atomic_write, atomic_write_text
from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.hf.names import GPT2, LLAMA
from centelha.formats.table import Row, Table, Transposed
from centelha.lora.config import LoRAConfig
from centelha.lora.inject import lora_layers
from centelha.lora.layer import LoRALinear
from centelha.quant import QuantLinear

CONFIG_FILE, TENSORS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # what PeftModel adds before the wrapped model's names


def export_peft(model: nn.Module, folder: str | Path,
                base_model_name_or_path: str | None = None) -> Path:
    """Write `model`'s LoRA adapters to `folder` as a PEFT adapter (see the module notes).
    Returns the folder."""
    config, cfg, layers = exportable_adapters(
        model, "PEFT", tied_head="merging it there would change the embedding too")
    table = hf_table(cfg)
    tensors, adapted = {}, []
    for name, layer in layers:
        for module, (a, b) in split_adapter(table, cfg, name, layer).items():
            tensors[f"{PREFIX}{module}.lora_A.weight"] = a
            tensors[f"{PREFIX}{module}.lora_B.weight"] = b
            adapted.append(module)
    description = peft_config(config, target_modules(table, model, adapted),
                              base_model_name_or_path, fan_in_fan_out=table is GPT2)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # tensors first, so a config on disk always describes a complete tensors file
    atomic_write(folder / TENSORS_FILE,
                 lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(description, indent=2) + "\n")
    return folder


def exportable_adapters(model: nn.Module, target: str, tied_head: str
                        ) -> tuple[LoRAConfig, ModelConfig, list[tuple[str, LoRALinear]]]:
    """(LoRA config, model config, adapters) of a model whose adapters can be exported to
    `target`; no adapters, merged ones, a model without a config, or a LoRA on a tied head
    (`tied_head`: why `target` cannot take it) are refused in one line."""
    config, layers = getattr(model, "lora_config", None), list(lora_layers(model))
    if config is None or not layers:
        raise CentelhaError("the model has no LoRA adapters to export: run apply_lora or "
                            "load_adapter first")
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise CentelhaError(f"{target} export needs a centelha Transformer (its config "
                            "names the layout to write)")
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        more = f" and {len(merged) - 1} more" if len(merged) > 1 else ""
        raise CentelhaError(f"the model's adapters are merged into its weights ({merged[0]}"
                            f"{more}); unmerge(model) before exporting them to {target}")
    if cfg.tie_embeddings and any(name == "lm_head" for name, _ in layers):
        raise CentelhaError(f"cannot export a LoRA on a head tied to the token embedding "
                            f"to {target}: {tied_head}")
    return config, cfg, layers


def hf_table(cfg: ModelConfig) -> Table:
    """The Hugging Face name table `save_hf` writes a model of `cfg` with (GPT-2's for
    learned positions, the Llama/Mistral/Qwen one otherwise, as `config_to_hf` decides)."""
    return GPT2 if cfg.family == "gpt2" or cfg.pos == "learned" else LLAMA


def hf_modules(table: Table, name: str) -> tuple[Row, list[str]]:
    """The table row of our linear layer `name`, and its Hugging Face module names."""
    row, fields = table.find(f"{name}.weight")
    return row, [n.removesuffix(".weight") for n in row.their_names(fields)]


def split_adapter(table: Table, cfg: ModelConfig, name: str,
                  layer: LoRALinear) -> dict[str, tuple[Tensor, Tensor]]:
    """{Hugging Face module: (A, B)} for our adapter `name`: B goes through the row's
    transform like the weight does (split, reordered rows), A is the same for each part."""
    row, modules = hf_modules(table, name)
    a, b = (_plain(t) for t in (layer.lora_A, layer.lora_B))
    # Conv1D's transpose is PEFT's job (fan_in_fan_out); every other transform moves rows
    parts = [b] if isinstance(row.transform, Transposed) else row.transform.to_theirs(b, cfg)
    if len(parts) != len(modules):
        raise CentelhaError(f"{table.name}: {name} maps to {len(modules)} modules but its "
                            f"adapter splits into {len(parts)}")
    # safetensors refuses tensors sharing memory: every module gets its own copy of A
    return {module: (a.clone(), part.contiguous().clone())
            for module, part in zip(modules, parts, strict=True)}


def target_modules(table: Table, model: nn.Module,
                   adapted: list[str]) -> list[str] | str:
    """PEFT's `target_modules`: leaf names if they pick out exactly `adapted` among the
    Hugging Face model's linear layers, else a regex of the full names."""
    every = [m for name in _linear_names(model) for m in hf_modules(table, name)[1]]
    leaves = sorted({m.rsplit(".", 1)[-1] for m in adapted})
    if {m for m in every if m.rsplit(".", 1)[-1] in leaves} == set(adapted):
        return leaves
    return "^(?:" + "|".join(re.escape(m) for m in adapted) + ")$"


def _linear_names(model: nn.Module) -> list[str]:
    """Our linear layers (an adapted one by its LoRALinear's name, not its `.base`)."""
    adapted = {name for name, _ in lora_layers(model)}
    names = []
    for name, module in model.named_modules():
        if name in adapted:
            names.append(name)
        elif isinstance(module, (nn.Linear, QuantLinear)) and \
                name.removesuffix(".base") not in adapted:
            names.append(name)
    return names


def peft_config(config: LoRAConfig, targets: list[str] | str,
                base_model_name_or_path: str | None, fan_in_fan_out: bool) -> dict[str, Any]:
    """adapter_config.json: PEFT's LoraConfig fields for this adapter."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config.r,
            "lora_alpha": config.alpha, "lora_dropout": config.dropout,
            "use_rslora": config.rslora, "target_modules": targets, "bias": "none",
            "fan_in_fan_out": fan_in_fan_out, "modules_to_save": None,
            "init_lora_weights": True, "inference_mode": True,
            "base_model_name_or_path": base_model_name_or_path}


def _plain(parameter: nn.Parameter) -> Tensor:
    return parameter.detach().to("cpu", copy=False).contiguous()


__all__ = ["export_peft"]
