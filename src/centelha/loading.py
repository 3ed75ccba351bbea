"""Loading a model from a path: a centelha checkpoint, a Hugging Face folder or a GGUF file,
in the weight format asked for.

`load_model` is the one door every front end uses (`centelha.load`, the CLI, the server,
the benchmarks). Design choices a reader should know:
- The registry only resolves a name to a path (and reads headers for its cards); it never
  loads weights, so it does not import this module.
- `native` keeps a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K blocks as quantized layers with no fp32
  detour; int8/int4 quantize float weights after loading; fp32/bf16/fp16 cast the float
  weights and leave quantized layers alone.
- A LoRA `adapter` is checked against the float base it was trained on (its fingerprint)
  and merged into it before any cast or quantization, so generation pays nothing for it;
  `native` cannot take one (the merge needs float weights).
"""

from __future__ import annotations

from pathlib import Path

import torch

from centelha.checkpoint import load_checkpoint
from centelha.errors import CentelhaError
from centelha.model import Transformer
from centelha.quant import QuantLinear, is_quantized, quantize_model
from centelha.registry import resolve
from centelha.tokenizer import Tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZED = ("int8", "int4")
# "native": keep a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K blocks as they are (no fp32 copy)
WEIGHT_FORMATS = (*DTYPES, *QUANTIZED, "native")


def load_model(source: str | Path, dtype: str = "fp32", group_size: int = 32,
               adapter: str | Path | None = None) -> tuple[Transformer, Tokenizer, dict]:
    """(model in eval mode, tokenizer, info about where it came from).

    `dtype` chooses the weight format: fp32 (the default on CPU), bf16, fp16, int8
    (per output channel), int4 (groups of `group_size`), or native (a GGUF file's own
    blocks, loaded into quantized layers without an fp32 detour). `adapter`: a LoRA
    adapter folder (`centelha.lora.save_adapter`) merged into the weights.
    """
    if dtype not in WEIGHT_FORMATS:
        raise CentelhaError(f"dtype must be one of {', '.join(WEIGHT_FORMATS)}, not {dtype!r}")
    if adapter is not None and dtype == "native":
        raise CentelhaError("an adapter is merged into float weights, so it cannot be used "
                            "with --dtype native; use int4, int8 or a float dtype")
    path = resolve(source)
    if (path / "classifier.json").is_file():
        raise CentelhaError(f"{path} is a classifier, not a language model: use "
                            "`centelha predict` (or centelha.load, which returns a Classifier)")
    if is_adapter_run(path):
        # an adapter run stands for its base with its adapter merged (recursively: DPO
        # on top of an SFT adapter loads the SFT run first)
        from centelha.lora.adapter_file import CONFIG_FILE, read_description

        model, tokenizer, base_info = load_model(read_description(path / CONFIG_FILE)["base"])
        model = with_adapter(model, path)
        info = {**base_info, "adapter": str(path)}
    elif path.is_file():
        if path.suffix.lower() != ".gguf":
            raise CentelhaError(f"{path}: a model is a .gguf file or a folder "
                                "(centelha checkpoint or Hugging Face)")
        from centelha.formats.gguf import load_gguf

        cfg, tensors, tokenizer = load_gguf(path, keep_quantized=dtype == "native")
        model = with_blocks(cfg, tensors)
        info = {"format": "gguf", "quantization": cfg.extra.get("gguf_file_type", "unknown")}
    else:
        from centelha.formats.hf import is_hf_folder, load_hf

        if is_hf_folder(path):
            cfg, tensors, tokenizer = load_hf(path)
            model = Transformer.from_tensors(cfg, tensors)
            info = {"format": "hf"}
        else:
            model, tokenizer = load_checkpoint(path)
            info = {"format": "centelha"}
    info["path"] = str(path)
    if is_adapter_run(path) and dtype == "native":
        raise CentelhaError(f"{path} is an adapter, merged into float weights, so it cannot be "
                            "loaded with --dtype native; use int4, int8 or a float dtype")
    if adapter is not None:
        model = with_adapter(model, adapter)
        info["adapter"] = str(adapter)
    if dtype in QUANTIZED and not is_quantized(model):
        quantize_model(model, dtype, group_size)
    elif dtype in DTYPES:
        cast_floats(model, DTYPES[dtype])
    quantization = (model.cfg.extra.get("quantization") or {}).get("method")
    if is_quantized(model):
        info["quantization"] = quantization or dtype
    return model.eval(), tokenizer, info


def is_adapter_run(path: Path) -> bool:
    """A folder holding only an adapter (a LoRA fine-tune), not a whole model."""
    return path.is_dir() and (path / "adapter.json").is_file() \
        and not (path / "config.json").is_file()


def with_adapter(model: Transformer, adapter: str | Path) -> Transformer:
    """`model` with the LoRA adapter in `adapter` merged in (refused on another base)."""
    from centelha.lora import fold_adapters, load_adapter

    load_adapter(model, adapter)
    return fold_adapters(model)


def cast_floats(model: Transformer, dtype: torch.dtype) -> None:
    """Cast the float weights to `dtype`, leaving quantized layers' blocks and scales alone."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            continue
        for tensors in (module._parameters, module._buffers):
            for tensor in tensors.values():
                if tensor is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor.data = tensor.data.to(dtype)


def with_blocks(cfg, tensors: dict) -> Transformer:
    """A model whose matrices given as GGUF blocks become quantized layers; the rest float."""
    from centelha.formats.gguf import QuantizedRows
    blocks = {k: v for k, v in tensors.items() if isinstance(v, QuantizedRows)}
    dense = {k: torch.empty(v.shape, device="meta") if k in blocks else v
             for k, v in tensors.items()}
    model = Transformer.from_tensors(cfg, dense)
    for name, value in blocks.items():
        module = name.removesuffix(".weight")
        layer = QuantLinear.from_gguf_blocks(value.rows.numpy(), value.ggml_type, value.shape,
                                             bias=tensors.get(module + ".bias"))
        parent, _, attr = module.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer)
    return model
