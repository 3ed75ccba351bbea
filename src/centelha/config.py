"""`ModelConfig`: one dataclass that fully describes a decoder-only architecture.

Model families are presets of this one config, not separate model code: a family only
chooses the switches (norm, positions, MLP, biases, tied embeddings, grouped-query
attention). Unknown keys and impossible shapes are refused with a one-line message,
because a typo in a YAML file should not silently train the wrong model. So are values
of the wrong type and absurd sizes in a config file (a damaged download): `from_dict`
checks every field's type before anything is computed from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centelha.errors import CentelhaError
from centelha.jsonfile import read_json_object
from centelha.kinds import is_integer, is_number

# Switches each family sets; every other field keeps its dataclass default unless given.
FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(
        norm="layernorm", pos="learned", mlp="gelu", bias=True, tie_embeddings=True,
        norm_eps=1e-5,
    ),
    "llama": dict(
        norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_embeddings=False,
        norm_eps=1e-5, rope_theta=10000.0,
    ),
}

CHOICES = {
    "norm": ("layernorm", "rmsnorm"),
    "pos": ("learned", "rope"),
    "mlp": ("gelu", "swiglu"),
}

# The kind of value each field takes in a config file ("size": a positive integer).
FIELD_KINDS = {
    "family": "str", "norm": "str", "pos": "str", "mlp": "str",
    "vocab_size": "size", "block_size": "size", "n_layer": "size", "n_head": "size",
    "d_model": "size", "n_kv_head": "size or null", "head_dim": "size or null",
    "d_ff": "size or null", "norm_eps": "number", "rope_theta": "number",
    "dropout": "number", "init_std": "number", "bias": "bool", "qkv_bias": "bool or null",
    "qk_norm": "bool", "tie_embeddings": "bool", "rope_scaling": "object or null",
    "extra": "object",
}
# Bounds no real model comes near: beyond them a config is a corrupt file, refused
# before a float (or a tensor) of that size overflows. 2^48 weights is about a thousand
# times the largest models.
MAX_SIZE, MAX_WEIGHTS = 1 << 32, 1 << 48


def _is_kind(value: Any, kind: str) -> bool:
    if kind.endswith(" or null"):
        return value is None or _is_kind(value, kind.removesuffix(" or null"))
    if kind == "size":
        return is_integer(value) and 0 < value < MAX_SIZE
    if kind == "number":
        return is_number(value)
    return isinstance(value, {"str": str, "bool": bool, "object": dict}[kind])


KIND_NAMES = {"str": "a string", "size": "a positive integer below 2^32",
              "number": "a finite number", "bool": "true or false", "object": "a JSON object"}


def _check_kinds(values: dict[str, Any]) -> None:
    for key, value in values.items():
        kind = FIELD_KINDS.get(key)
        if kind is not None and not _is_kind(value, kind):
            base = kind.removesuffix(" or null")
            expected = KIND_NAMES[base] + (" or null" if kind != base else "")
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise CentelhaError(f"model.{key} must be {expected}, not {shown}")


def _weights(cfg: ModelConfig) -> int:
    """Roughly how many weights the config describes (exact ints, no overflow)."""
    attention = cfg.d_model * (2 * cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
    layer = attention + 3 * cfg.d_model * cfg.d_ff
    return cfg.n_layer * layer + (2 * cfg.vocab_size + cfg.block_size) * cfg.d_model


ROPE_KINDS = ("default", "linear", "llama3")
ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def normalised_rope_scaling(scaling: dict | None) -> dict | None:
    """The one reading of a rope-scaling object: None for plain rotary positions, else
    {"rope_type": kind, …the keys that kind uses}. Old files say "type", new ones
    "rope_type"; both are accepted here so that no other module has to know."""
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_KINDS:
        raise CentelhaError(f"rope scaling {kind!r} is not supported "
                            f"(supported: {', '.join(ROPE_KINDS)})")
    if kind == "default":
        return None
    factor = scaling.get("factor")
    if not is_number(factor) or factor <= 0:
        raise CentelhaError(f"{kind} rope scaling needs a positive factor, not {factor!r}")
    return {"rope_type": kind, **{k: scaling[k] for k in ROPE_KEYS if k in scaling}}


@dataclass
class ModelConfig:
    """Everything that fixes a decoder-only architecture; `Transformer(cfg)` builds it.

    Families are presets: `family: llama` sets RMSNorm, rotary positions, SwiGLU, no
    biases and untied embeddings, and any field given beside it overrides the preset.
    In YAML this is the `model:` section; each field's help is the text under it.
    """

    family: str = "gpt2"
    """Preset the other fields start from: gpt2 or llama (qwen2, qwen3 and mistral are
    llama with other switches)."""
    vocab_size: int = 50257
    """Rows of the embedding and the output head; at least the tokenizer's vocabulary
    (left out in a training config: taken from the prepared data's tokenizer)."""
    block_size: int = 1024
    """The context: the most tokens the model attends over (learned positions' table size)."""
    n_layer: int = 12
    """Transformer blocks stacked."""
    n_head: int = 12
    """Query heads per attention layer."""
    n_kv_head: int | None = None
    """Key/value heads (grouped-query attention: n_head must be a multiple);
    null: as many as query heads (plain multi-head attention)."""
    d_model: int = 768
    """Width of the residual stream (the embedding size)."""
    head_dim: int | None = None
    """Channels per head; null: d_model / n_head."""
    d_ff: int | None = None
    """Hidden width of the MLP; null: 4 × d_model (gelu) or ≈ 8/3 × d_model rounded up
    to a multiple of 64 (swiglu)."""
    norm: str = "layernorm"
    """Normalisation before attention and MLP: layernorm (GPT-2) or rmsnorm (Llama)."""
    norm_eps: float = 1e-5
    """Epsilon added to the variance in the norms."""
    pos: str = "learned"
    """Positions: learned (an embedding table, GPT-2) or rope (rotary, Llama)."""
    rope_theta: float = 10000.0
    """Rotary base: the longest wavelength grows with it."""
    rope_scaling: dict | None = None
    """Long-context scaling of rotary frequencies: null, or {rope_type: linear | llama3,
    factor: …, and llama3's low_freq_factor, high_freq_factor,
    original_max_position_embeddings}, as in Hugging Face's config.json."""
    mlp: str = "gelu"
    """MLP kind: gelu (two matrices, GPT-2) or swiglu (gated, three matrices, Llama)."""
    bias: bool = True
    """Biases on every linear layer (GPT-2) or none (Llama)."""
    qkv_bias: bool | None = None
    """Biases on the query/key/value projections only; null: the same as bias (Qwen2 has
    these and no others)."""
    qk_norm: bool = False
    """RMSNorm on each head's queries and keys before rotary positions (Qwen3)."""
    tie_embeddings: bool = True
    """The output head reuses the token embedding matrix."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches while training, in [0, 1)."""
    init_std: float = 0.02
    """Standard deviation of the initial weights (GPT-2's 0.02)."""
    extra: dict = field(default_factory=dict)
    """Free-form notes that travel with the model (where it came from, quantization…)."""

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.n_head <= 0 or self.d_model % self.n_head:
                raise CentelhaError(
                    f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
                )
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            if self.mlp == "swiglu":
                self.d_ff = 64 * -(-int(8 * self.d_model / 3) // 64)
            else:
                self.d_ff = 4 * self.d_model
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        self.rope_scaling = normalised_rope_scaling(self.rope_scaling)
        self.validate()

    @property
    def rope_kind(self) -> str:
        """How rotary frequencies are scaled for long contexts: default, linear or llama3."""
        return self.rope_scaling["rope_type"] if self.rope_scaling else "default"

    def validate(self) -> None:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise CentelhaError(
                    f"model.{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}"
                )
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_ff"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise CentelhaError(f"model.{key} must be a positive integer, not {value!r}")
        if self.n_head % self.n_kv_head:
            raise CentelhaError(
                f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})"
            )
        if self.pos == "rope" and self.head_dim % 2:
            raise CentelhaError(f"rotary positions need an even head_dim, not {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise CentelhaError(f"model.dropout must be in [0, 1), not {self.dropout}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a family preset plus overrides; unknown keys are an error."""
        values = dict(values)
        family = values.get("family", "gpt2")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CentelhaError(
                f"unknown model config key {unknown[0]!r} (known keys: {', '.join(sorted(known))})"
            )
        _check_kinds(values)
        preset = FAMILY_PRESETS.get(family, {})
        cfg = cls(**{**preset, **values})
        if cfg.init_std < 0:
            raise CentelhaError(f"model.init_std must not be negative, not {cfg.init_std}")
        if cfg.rope_theta <= 0:
            raise CentelhaError(f"model.rope_theta must be positive, not {cfg.rope_theta}")
        if _weights(cfg) > MAX_WEIGHTS:
            raise CentelhaError(f"the model config describes {_weights(cfg)} weights, far "
                                "beyond any real model (2^48): a corrupt file?")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(read_json_object(path))
