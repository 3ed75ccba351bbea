"""`load_gguf` and `read_gguf_shapes`: a GGUF file -> (config, tensors, tokenizer).

The pieces run in this order: the container's header (`container.py`), the config from
its metadata (`config.py`), the tokenizer (`tokenizer.py`), then the tensors through the
architecture's name table (`tensors.py`). The file is closed whatever happens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.gguf.config import read_config
from centelha.formats.gguf.container import read_gguf
from centelha.formats.gguf.tensors import gguf_to_tensors
from centelha.formats.gguf.tokenizer import read_tokenizer
from centelha.tokenizer import Tokenizer


def load_gguf(path: str | Path, keep_quantized: bool = False
              ) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Read a GGUF file: metadata -> ModelConfig, tensors dequantized to float32 and renamed
    to centelha's state-dict names, tokenizer rebuilt from tokenizer.ggml.* (with chat
    template).

    Build the model with `Transformer.from_tensors(cfg, tensors)` (or `Transformer(cfg)` +
    `load_state_dict(tensors, strict=False)`); with tied embeddings there is no
    `lm_head.weight`. With `keep_quantized`, matrices stored as Q8_0/Q4_0/Q4_1/Q4_K come
    back as `QuantizedRows` (their blocks, for `quant.QuantLinear`), and a tied head gets
    the embedding's blocks under `lm_head.weight`.
    """
    gguf = read_gguf(path)
    try:
        cfg = read_config(gguf)
        tokenizer = read_tokenizer(gguf)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise CentelhaError(f"{gguf.path}: the tokenizer has {tokenizer.vocab_size} tokens, "
                                f"the embedding only {cfg.vocab_size} rows")
        tensors = gguf_to_tensors(gguf, cfg, keep_quantized)
    finally:
        gguf.close()
    return cfg, tensors, tokenizer


def read_gguf_shapes(path: str | Path) -> tuple[ModelConfig, dict[str, tuple[int, ...]]]:
    """The config `load_gguf` would build and the shape of each tensor it would return
    (centelha names; a tied head has none), from the header alone: no weight is read.

    Two small exceptions, both needed for the config itself: Llama 3's `rope_freqs`
    vector (head_dim/2 values), and, in a file that stores `output.weight` beside
    `token_embd.weight` with the same type and shape, a comparison of the two to tell
    whether the head is tied (it stops at the first chunk that differs).
    """
    gguf = read_gguf(path)
    try:
        cfg = read_config(gguf)
        tensors = gguf_to_tensors(gguf, cfg, shapes_only=True)
    finally:
        gguf.close()
    return cfg, {name: tuple(t.shape) for name, t in tensors.items()}
