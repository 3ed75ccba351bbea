"""LoRA, written here: low-rank adapters over frozen float or quantized linear layers.

    from centelha.lora import apply_lora, save_adapter, load_adapter, merged_model
    config = apply_lora(model, r=8, alpha=16)           # only A and B require grad
    ... train lora_parameters(model) ...
    save_adapter(model, "runs/sft", base_name="smollm2-135m-instruct")
    load_adapter(fresh_base, "runs/sft")                 # refused on another base
    plain = merged_model(model)                          # base + scale·B·A, no wrappers

One idea per module, each building on the ones above it:

- `config`       `LoRAConfig`: rank, alpha, dropout, rsLoRA, targets; the scale
- `layer`        `LoRALinear`: base(x) + scale·B(A(dropout(x))); merge/unmerge one layer
- `inject`       `apply_lora`: target patterns, wrapping, freezing; `adapters_disabled`
- `merge`        `merge` / `unmerge` in place, `merged_model` as a plain copy
- `fingerprint`  `base_fingerprint`: the cheap hash that names an adapter's base
- `adapter_file` `save_adapter` / `load_adapter`: adapter.safetensors + adapter.json
- `peft_export`  `export_peft`: adapter_config.json + adapter_model.safetensors for PEFT
- `gguf_export`  `export_gguf_lora`: a llama.cpp GGUF LoRA adapter (`--lora`)

Exporting (PEFT, GGUF) builds on `lora_layers`: our fused `attn.qkv` adapter becomes
q/k/v adapters that share A and split B by rows [q_size, kv_size, kv_size], and the fused
`mlp.fc_in` becomes gate/up the same way ([d_ff, d_ff]).
"""

from centelha.lora.adapter_file import load_adapter, save_adapter
from centelha.lora.config import DEFAULT_TARGETS, LoRAConfig
from centelha.lora.fingerprint import base_fingerprint
from centelha.lora.gguf_export import export_gguf_lora
from centelha.lora.inject import (
    adapters_disabled,
    apply_lora,
    has_lora,
    lora_layers,
    lora_parameters,
)
from centelha.lora.layer import LoRALinear
from centelha.lora.merge import fold_adapters, merge, merged_model, unmerge
from centelha.lora.peft_export import export_peft

__all__ = [
    "DEFAULT_TARGETS",
    "LoRAConfig",
    "LoRALinear",
    "adapters_disabled",
    "apply_lora",
    "base_fingerprint",
    "export_gguf_lora",
    "export_peft",
    "fold_adapters",
    "has_lora",
    "load_adapter",
    "lora_layers",
    "lora_parameters",
    "merge",
    "merged_model",
    "save_adapter",
    "unmerge",
]
