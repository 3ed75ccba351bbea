"""What `centelha lora merge` and `centelha lora export` do: an adapter folder, with the
base it names, turned into a plain checkpoint or into another tool's adapter format.

An adapter folder names its base in `adapter.json` (a registry name or a path, as it was
given when the adapter was saved); `base=` overrides it, for a base that has moved. The
base is loaded in float32 and the adapter checked against its fingerprint either way.

This module is not imported by `centelha.lora` itself: it loads models (`centelha.loading`),
which imports `centelha.lora` for `--adapter`, and the two must not form a cycle.
"""

from __future__ import annotations

from pathlib import Path

from centelha.checkpoint import save_model_files
from centelha.errors import CentelhaError
from centelha.loading import load_model
from centelha.lora.adapter_file import CONFIG_FILE, load_adapter, read_description
from centelha.lora.gguf_export import export_gguf_lora
from centelha.lora.peft_export import export_peft

EXPORT_FORMATS = ("peft", "gguf")


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter folder names."""
    return read_description(Path(adapter) / CONFIG_FILE)["base"]


def merge_adapter(adapter: str | Path, out: str | Path, base: str | Path | None = None) -> Path:
    """A checkpoint folder at `out` holding base + adapter merged: a plain model that every
    command loads, converts, quantizes or serves."""
    model, tokenizer, _ = load_model(base or adapter_base(adapter), adapter=adapter)
    save_model_files(out, model, tokenizer)
    return Path(out)


def export_adapter(adapter: str | Path, to: str, out: str | Path,
                   base: str | Path | None = None) -> Path:
    """The adapter in another tool's format: `peft` (a folder for `PeftModel.from_pretrained`
    on the transformers model of the same base) or `gguf` (a file for llama.cpp's
    `--lora`)."""
    if to not in EXPORT_FORMATS:
        raise CentelhaError(f"--to must be one of {', '.join(EXPORT_FORMATS)}, not {to!r}")
    base_name = str(base or adapter_base(adapter))
    model, _, _ = load_model(base_name)
    load_adapter(model, adapter)
    if to == "peft":
        return export_peft(model, out, base_model_name_or_path=base_name)
    return export_gguf_lora(model, out)
