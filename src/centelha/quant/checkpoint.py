"""`quantize_checkpoint`: any model centelha loads → a checkpoint folder with int8/int4 weights.

What `centelha quantize` does, as a function. The order is what keeps a failure harmless:
the arguments are checked first (before a possibly long load), the model is loaded and
quantized wholly in memory, and only then is anything written, each file atomically by
`save_model_files`. So a bad method, source or layer shape leaves an existing `out` as it
was. A source whose layers are already quantized (an int4 checkpoint, a GGUF file's
blocks) is dequantized first and quantized again, so the file written always holds the
method asked for.

Not imported by `centelha.quant` itself: it builds on `centelha.loading` and
`centelha.checkpoint`, which import the quant package, so importing it from there would
tie the modules in a cycle.
"""

from __future__ import annotations

from pathlib import Path

from centelha.errors import CentelhaError
from centelha.quant.blocks import check_group_size, check_method
from centelha.quant.whole_model import dequantize_model, is_quantized, quantize_model


def quantize_checkpoint(source: str | Path, out: str | Path, method: str,
                        group_size: int = 32) -> Path:
    """Load `source` (a folder, .gguf file or registry name), quantize its linear layers to
    `method` ("int8" per output row, or "int4" per group of `group_size`: 32, 64 or 128)
    and save a checkpoint folder at `out` that every command loads. Returns `out`."""
    from centelha.checkpoint import save_model_files
    from centelha.loading import load_model

    check_method(method)
    check_group_size(group_size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CentelhaError(f"{out} exists and is not a folder: the checkpoint is a folder")
    model, tokenizer, _ = load_model(source)
    if is_quantized(model):
        dequantize_model(model)
    quantize_model(model, method, group_size)
    save_model_files(out, model, tokenizer)
    return out
