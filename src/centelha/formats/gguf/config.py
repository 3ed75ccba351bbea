"""A GGUF file's metadata -> `ModelConfig`.

The keys are llama.cpp's, `{architecture}.{key}` (`llama.block_count`…); shapes that the
metadata leaves out come from the tensors (the vocabulary from `token_embd.weight`, q/k/v
biases and q/k norms from whether their tensors exist). Every value is checked for its
kind; per-layer arrays are accepted when all layers agree, as centelha has one value for
every layer. Rope scaling is linear (metadata) or Llama 3's (the `rope_freqs` tensor).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import LlamaFileType

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.gguf.container import GGUFFile
from centelha.formats.gguf.rope import llama3_scaling_from_factors

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gpt2")
MAX_CONTEXT = 1 << 24  # a context_length above 16M positions is a corrupt header
MISSING = object()


def meta(gguf: GGUFFile, key: str, kind: type, default: Any = MISSING) -> Any:
    """A metadata value of the expected kind (int, float, str or bool)."""
    if key not in gguf.metadata:
        if default is MISSING:
            raise CentelhaError(f"{gguf.path} lacks the metadata key {key}")
        return default
    value = gguf.metadata[key]
    if isinstance(value, np.ndarray) and kind in (int, float):
        # some files give per-layer values; centelha has one value for every layer
        if value.size == 0 or not (value == value.flat[0]).all():
            raise CentelhaError(f"{gguf.path}: {key} differs between layers, which centelha "
                                "does not support")
        value = value.flat[0].item()
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str), bool: isinstance(value, (bool, int))}[kind]
    if not ok:
        raise CentelhaError(f"{gguf.path}: {key} should be {kind.__name__}, not {value!r}")
    return kind(value)


def read_config(gguf: GGUFFile) -> ModelConfig:
    arch = meta(gguf, "general.architecture", str)
    if arch not in ARCHITECTURES:
        raise CentelhaError(f"{gguf.path}: architecture {arch!r} is not supported "
                            f"(supported: {', '.join(ARCHITECTURES)})")
    if "token_embd.weight" not in gguf.tensors:
        raise CentelhaError(f"{gguf.path} lacks the tensor token_embd.weight")
    if len(gguf.tensors["token_embd.weight"].shape) != 2:
        raise CentelhaError(f"{gguf.path}: token_embd.weight is not a matrix (shape "
                            f"{gguf.tensors['token_embd.weight'].shape})")
    vocab_size, d_model = gguf.tensors["token_embd.weight"].shape

    def get(key, kind=int, default=MISSING):
        return meta(gguf, f"{arch}.{key}", kind, default)

    n_head = get("attention.head_count")
    block_size = get("context_length")
    if not 0 < block_size <= MAX_CONTEXT:
        raise CentelhaError(f"{gguf.path}: context_length {block_size} is implausible")
    values: dict[str, Any] = dict(
        vocab_size=vocab_size, block_size=block_size, n_layer=get("block_count"),
        n_head=n_head, n_kv_head=get("attention.head_count_kv", int, n_head),
        d_model=get("embedding_length"), d_ff=get("feed_forward_length"),
        tie_embeddings="output.weight" not in gguf.tensors
        or gguf.same_bytes("output.weight", "token_embd.weight"),
        extra={"gguf_architecture": arch, "gguf_file_type": _file_type(gguf)},
    )
    if values["d_model"] != d_model:
        raise CentelhaError(f"{gguf.path}: embedding_length {values['d_model']} does not match "
                            f"token_embd.weight ({d_model} columns)")
    if arch == "gpt2":
        values.update(family="gpt2", norm_eps=get("attention.layer_norm_epsilon", float))
    else:
        values.update(_llama_like_values(gguf, arch, get))
    try:
        return ModelConfig.from_dict(values)
    except CentelhaError as e:
        raise CentelhaError(f"{gguf.path}: {e}") from None


def _llama_like_values(gguf: GGUFFile, arch: str, get) -> dict[str, Any]:
    n_head, d_model = get("attention.head_count"), get("embedding_length")
    head_dim = get("attention.key_length", int, d_model // max(n_head, 1))
    if get("attention.value_length", int, head_dim) != head_dim:
        raise CentelhaError(f"{gguf.path}: keys and values of different widths are not supported")
    rope_dim = get("rope.dimension_count", int, head_dim)
    if rope_dim != head_dim:
        raise CentelhaError(f"{gguf.path}: partial rotary embeddings (rope.dimension_count "
                            f"{rope_dim} of head_dim {head_dim}) are not supported")
    theta = get("rope.freq_base", float, 10000.0)
    return dict(
        family="llama", head_dim=head_dim, rope_theta=theta,
        norm_eps=get("attention.layer_norm_rms_epsilon", float,
                     get("attention.layer_norm_epsilon", float, 1e-5)),
        rope_scaling=_rope_scaling(gguf, arch, theta, head_dim),
        qkv_bias="blk.0.attn_q.bias" in gguf.tensors,
        qk_norm="blk.0.attn_q_norm.weight" in gguf.tensors,
    )


def _file_type(gguf: GGUFFile) -> str:
    """"Q4_1", "F16"…: the file's declared type, or its weights' most common one."""
    try:
        name = LlamaFileType(gguf.metadata["general.file_type"]).name
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (KeyError, ValueError, TypeError):
        kinds = [t.qtype.name for t in gguf.tensors.values() if len(t.shape) == 2]
        return max(set(kinds), key=kinds.count) if kinds else "unknown"


def _rope_scaling(gguf: GGUFFile, arch: str, theta: float, head_dim: int) -> dict | None:
    """Llama 3's scaling is stored as a tensor of per-frequency divisors (`rope_freqs`);
    linear scaling as metadata."""
    if "rope_freqs.weight" in gguf.tensors:
        if gguf.tensors["rope_freqs.weight"].shape != (head_dim // 2,):
            raise CentelhaError(f"{gguf.path}: rope_freqs.weight has shape "
                                f"{gguf.tensors['rope_freqs.weight'].shape}, expected "
                                f"({head_dim // 2},)")
        factors = gguf.tensor("rope_freqs.weight").double().numpy()
        return llama3_scaling_from_factors(factors, theta, head_dim, gguf.path)
    kind = meta(gguf, f"{arch}.rope.scaling.type", str, "none")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear",
                "factor": meta(gguf, f"{arch}.rope.scaling.factor", float)}
    raise CentelhaError(f"{gguf.path}: rope scaling {kind!r} is not supported "
                        "(supported: none, linear, Llama 3's rope_freqs)")
