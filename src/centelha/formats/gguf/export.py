"""`save_gguf`: a centelha model + tokenizer -> a GGUF file that llama.cpp can run.

The architecture is the llama.cpp one that runs the config exactly (`gpt2`, `llama`,
`qwen2` for q/k/v biases, `qwen3` for q/k norms); a config none of them runs is refused
before anything is written. Matrices are written in f32, f16 or q8_0 (rows that do not
fill whole q8_0 blocks fall back to f16, as in llama.cpp); norms, biases, the position
table and Llama 3's `rope_freqs` stay float32. The file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType, RopeScalingType
from gguf.quants import quantize

from centelha.atomic import atomic_write
from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.gguf.tensors import tensors_to_gguf
from centelha.formats.gguf.tokenizer_export import export_vocab, write_tokenizer_metadata
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer

Q = GGMLQuantizationType
EXPORT_FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                     "q8_0": LlamaFileType.MOSTLY_Q8_0}


def export_architecture(cfg: ModelConfig) -> str:
    """The llama.cpp architecture that runs this config exactly."""
    arch = _matching_architecture(cfg)
    if arch != "llama" and cfg.rope_kind == "llama3":
        # llama.cpp reads Llama 3's frequency table (rope_freqs) for llama models only
        raise CentelhaError(f"Llama 3 rope scaling cannot be exported on a {arch} model")
    return arch


def _matching_architecture(cfg: ModelConfig) -> str:
    switches = (cfg.norm, cfg.pos, cfg.mlp)
    if switches == ("layernorm", "learned", "gelu") and cfg.bias and cfg.qkv_bias \
            and not cfg.qk_norm and cfg.n_kv_head == cfg.n_head \
            and cfg.head_dim * cfg.n_head == cfg.d_model:
        return "gpt2"
    if switches == ("rmsnorm", "rope", "swiglu") and not cfg.bias:
        if not cfg.qkv_bias and not cfg.qk_norm:
            return "llama"
        if cfg.qkv_bias and not cfg.qk_norm:
            return "qwen2"
        if cfg.qk_norm and not cfg.qkv_bias:
            return "qwen3"
    raise CentelhaError(
        "GGUF export supports gpt2-style models (layernorm with biases, learned positions, "
        "gelu) and llama-style ones (rmsnorm, rope, swiglu, no biases; q/k/v biases -> qwen2, "
        f"q/k norms -> qwen3); this config has norm={cfg.norm}, pos={cfg.pos}, mlp={cfg.mlp}, "
        f"bias={cfg.bias}, qkv_bias={cfg.qkv_bias}, qk_norm={cfg.qk_norm}")


def _encode(name: str, tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, Q | None]:
    """(array, raw type for quantized data) as the writer wants them. Norms, biases and
    other vectors stay float32 (llama.cpp expects that); so does the position table,
    which llama.cpp's converter also keeps in float32."""
    array = tensor.numpy().astype(np.float32)
    if array.ndim < 2 or name in ("position_embd.weight", "rope_freqs.weight") \
            or dtype == "f32":
        return array, None
    if dtype == "q8_0" and array.shape[-1] % GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return quantize(array, Q.Q8_0), Q.Q8_0
    # f16, and q8_0 rows that do not fill whole blocks (llama.cpp falls back the same way)
    half = array.astype(np.float16)
    if not np.isfinite(half).all():
        raise CentelhaError(f"weight {name} has values beyond float16's range; export with "
                            "dtype='f32' or 'q8_0'")
    return half, None


def save_gguf(model: Transformer, tokenizer: Tokenizer, path: str | Path,
              dtype: str = "f16") -> None:
    """Write a GGUF file that llama.cpp / LM Studio can run. dtype: "f32", "f16" or "q8_0"
    (2-D weight matrices quantized; norms/biases stay f32). Written atomically (temp file +
    os.replace)."""
    if dtype not in EXPORT_FILE_TYPES:
        raise CentelhaError(f"GGUF dtype must be one of {', '.join(EXPORT_FILE_TYPES)}, "
                            f"not {dtype!r}")
    cfg = model.cfg
    arch = export_architecture(cfg)
    vocab = export_vocab(tokenizer, cfg.vocab_size)
    tensors = {name: _encode(name, t, dtype) for name, t in tensors_to_gguf(model, arch).items()}

    def write(tmp: Path) -> None:
        writer = GGUFWriter(str(tmp), arch)
        _write_model_metadata(writer, cfg, arch, dtype, name=Path(path).stem)
        write_tokenizer_metadata(writer, tokenizer, vocab)
        for name, (array, raw_dtype) in tensors.items():
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as e:
        raise CentelhaError(f"cannot write {path}: {e.strerror or e}") from None


def _write_model_metadata(writer: GGUFWriter, cfg: ModelConfig, arch: str, dtype: str,
                          name: str) -> None:
    writer.add_name(name)
    writer.add_file_type(EXPORT_FILE_TYPES[dtype])
    if dtype == "q8_0":
        writer.add_quantization_version(2)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    if arch == "gpt2":
        writer.add_layer_norm_eps(cfg.norm_eps)
        return
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim * cfg.n_head != cfg.d_model:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    if cfg.rope_kind == "linear":  # llama3 scaling travels as the rope_freqs tensor
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_scaling["factor"])
