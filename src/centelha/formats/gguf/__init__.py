"""GGUF files (llama.cpp, Ollama, LM Studio): import `llama`, `qwen2`, `qwen3` and `gpt2`
models, export centelha models that llama.cpp can run.

A GGUF file is a header (metadata key/values, then one entry per tensor: name, shape,
type, offset) followed by the tensor data. One idea per module:

- `container.py` parses and validates the header (every count checked against the bytes
  left before it is used) and memory-maps the data; `blocks` live in `formats/blocks.py`.
- `config.py` turns the metadata into a `ModelConfig`; `rope.py` holds Llama 3's rope
  scaling, which llama.cpp stores as a tensor of per-frequency divisors.
- `names.py` is the name table of each architecture (ours ↔ theirs + transform: q/k/v
  split, llama.cpp's Q/K row order), read one way by `tensors.py` on import and the
  other way on export, so the two cannot drift.
- `tokenizer.py` rebuilds the tokenizer from `tokenizer.ggml.*`; `tokenizer_export.py`
  writes it back.
- `load.py` is the import entry point; `export.py` writes a file.

Dequantization is `gguf.quants.dequantize`, the numpy code the llama.cpp project keeps in
step with ggml. `read_gguf_shapes` is `load_gguf` without the data: the same config and
the same shape checks (the model card is made from it).
"""

from centelha.formats.blocks import QuantizedRows
from centelha.formats.gguf.export import save_gguf
from centelha.formats.gguf.load import load_gguf, read_gguf_shapes

__all__ = ["QuantizedRows", "load_gguf", "read_gguf_shapes", "save_gguf"]
