"""GGUF LoRA export: a model's LoRA adapters as a file llama.cpp loads with `--lora`.

    save_gguf(base, tokenizer, "export/base.gguf")          # the base, as usual
    export_gguf_lora(model, "export/sft-lora.gguf")          # its adapters, beside it

The file holds metadata `general.type = adapter`, `general.architecture` (the base's
llama.cpp architecture, picked as `save_gguf` picks it), `adapter.type = lora` and
`adapter.lora.alpha`, and two tensors per adapted GGUF matrix:
`blk.N.attn_q.weight.lora_a` [r, in] and `.lora_b` [out, r] (torch order; the `gguf`
writer reverses them into ggml's dimension order, as for the base), float32 or float16.

Design choices:
- Tensor names come from the GGUF name table (`formats/gguf/names.py`), the one
  `save_gguf` writes the base with, through the same splitter the PEFT export uses
  (`peft_export.split_adapter`): B goes through the row's transform like the weight does
  and A is repeated for each part. So our fused `attn.qkv` adapter becomes q/k/v adapters
  sharing A with B split by rows, `mlp.fc_in` becomes gate/up, and, for `llama` files,
  the rows of B for q and k get the same rotary permutation as `attn_q`/`attn_k`: a
  permutation P of the weight's rows gives P·(W + s·B·A) = P·W + s·(P·B)·A, so the
  update lands on exactly the rows llama.cpp reads. (`qwen2`/`qwen3` keep our order.)
- The scale. llama.cpp multiplies B·A by alpha / r, r read from A's shape. Our scale is
  alpha / r, or alpha / sqrt(r) with rsLoRA, which llama.cpp has no switch for; the file
  then carries the alpha that gives our scale under llama.cpp's rule: alpha_eff = scale·r
  (= alpha·sqrt(r)). Plain LoRA writes alpha itself.
- Refused, in one line: a model without adapters, a merged one (the update is inside its
  weights: exported over a base it would count twice), a non-llama-family model (GPT-2's
  fused, transposed layout), and a LoRA on a head tied to the token embedding (the base
  file has no `output.weight` to adapt, and adapting the embedding would change it too).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from gguf import GGUFType, GGUFWriter, Keys
from torch import Tensor, nn

from centelha.atomic import atomic_write
from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.gguf.export import export_architecture
from centelha.formats.gguf.names import TABLES
from centelha.lora.config import LoRAConfig
from centelha.lora.layer import LoRALinear
from centelha.lora.peft_export import exportable_adapters, split_adapter

DTYPES = {"f32": np.float32, "f16": np.float16}
LLAMA_FAMILY = ("llama", "qwen2", "qwen3")  # architectures sharing the llama name table


def export_gguf_lora(model: nn.Module, path: str | Path, dtype: str = "f32") -> Path:
    """Write `model`'s LoRA adapters to `path` as a llama.cpp GGUF adapter (see the module
    notes). dtype: "f32" (default) or "f16". Written atomically; returns the path."""
    if dtype not in DTYPES:
        raise CentelhaError(f"GGUF LoRA dtype must be one of {', '.join(DTYPES)}, "
                            f"not {dtype!r}")
    config, cfg, arch, layers = _exportable(model)
    arrays = {name: _encode(name, t, dtype)
              for name, t in gguf_lora_tensors(cfg, arch, layers).items()}
    path = Path(path)

    def write(tmp: Path) -> None:
        # closing(): the writer's file is closed even when a write fails half-way
        with contextlib.closing(GGUFWriter(str(tmp), arch)) as writer:
            writer.add_type(GGUFType.ADAPTER)
            writer.add_name(path.stem)
            writer.add_string(Keys.Adapter.TYPE, "lora")
            writer.add_float32(Keys.Adapter.LORA_ALPHA, llama_cpp_alpha(config))
            for name, array in arrays.items():
                writer.add_tensor(name, array)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as e:
        raise CentelhaError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def llama_cpp_alpha(config: LoRAConfig) -> float:
    """The `adapter.lora.alpha` that makes llama.cpp's alpha / r equal our scale."""
    return config.scale * config.r if config.rslora else float(config.alpha)


def gguf_lora_tensors(cfg: ModelConfig, arch: str,
                      layers: list[tuple[str, LoRALinear]]) -> dict[str, Tensor]:
    """{GGUF tensor name: A or B} for every adapter, split and permuted like the base."""
    out = {}
    for name, layer in layers:
        # split_adapter names modules as their weight less ".weight": GGUF wants it back
        for module, (a, b) in split_adapter(TABLES[arch], cfg, name, layer).items():
            out[f"{module}.weight.lora_a"] = a
            out[f"{module}.weight.lora_b"] = b
    return out


def _exportable(model: nn.Module) -> tuple[LoRAConfig, ModelConfig, str,
                                           list[tuple[str, LoRALinear]]]:
    """(LoRA config, model config, llama.cpp architecture, adapters) of a model whose
    adapters a GGUF adapter file can hold; anything else is refused in one line."""
    config, cfg, layers = exportable_adapters(
        model, "GGUF", tied_head="the base file has no output.weight to adapt")
    arch = export_architecture(cfg)  # the base's, exactly as save_gguf picks it
    if arch not in LLAMA_FAMILY:
        raise CentelhaError(f"GGUF LoRA export supports llama-family models "
                            f"({', '.join(LLAMA_FAMILY)}), not {arch}")
    return config, cfg, arch, layers


def _encode(name: str, tensor: Tensor, dtype: str) -> np.ndarray:
    array = tensor.float().numpy().astype(DTYPES[dtype])
    if not np.isfinite(array).all():
        raise CentelhaError(f"adapter tensor {name} has values beyond {dtype}'s range"
                            + ("; export with dtype='f32'" if dtype == "f16" else ""))
    return array


__all__ = ["export_gguf_lora", "gguf_lora_tensors", "llama_cpp_alpha"]
