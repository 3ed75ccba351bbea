"""`convert`: write any model centelha loads as a Hugging Face folder or a GGUF file.

What `centelha convert` does, as a function. A model with quantized layers (a checkpoint
from `centelha quantize`, or a GGUF loaded natively) is dequantized to float32 first:
the HF format has no place for our int8/int4 blocks, and the GGUF writer takes float
weights and quantizes them itself (`dtype="q8_0"`). The weights written are then the
quantized model's own values, not the original float ones, which are gone.
"""

from __future__ import annotations

from pathlib import Path

from centelha.errors import CentelhaError

TARGETS = ("hf", "gguf")


def convert(source: str | Path, to: str, out: str | Path, dtype: str = "f16") -> dict:
    """Export `source` (a folder, .gguf file or registry name) to `out`: `to="hf"` (a
    folder transformers loads) or `"gguf"` (a file for llama.cpp and LM Studio, weights
    in `dtype`: f32, f16 or q8_0). Returns what was done: {"path", "dequantized"}."""
    from centelha.loading import load_model
    from centelha.quant import dequantize_model

    if to not in TARGETS:
        raise CentelhaError(f"--to must be hf or gguf, not {to!r}")
    model, tokenizer, _ = load_model(source)
    dequantized = dequantize_model(model)
    if to == "hf":
        from centelha.formats.hf import save_hf

        path = save_hf(model, tokenizer, out)
    else:
        from centelha.formats.gguf import save_gguf

        save_gguf(model, tokenizer, out, dtype=dtype)
        path = Path(out)
    return {"path": str(path), "dequantized": dequantized}
