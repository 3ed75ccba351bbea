"""`ModelConfig`: one dataclass that fully describes a decoder-only architecture.

Model families are presets of this one config, not separate model code: a family only
chooses the switches (norm, positions, MLP, biases, tied embeddings, grouped-query
attention). Unknown keys and impossible shapes are refused with a one-line message,
because a typo in a YAML file should not silently train the wrong model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centelha.errors import CentelhaError

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


@dataclass
class ModelConfig:
    family: str = "gpt2"
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None      # None: as many as query heads (plain multi-head)
    d_model: int = 768
    head_dim: int | None = None       # None: d_model // n_head
    d_ff: int | None = None           # None: 4·d (gelu) or ≈ 8/3·d rounded to 64 (swiglu)
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    pos: str = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    mlp: str = "gelu"
    bias: bool = True
    qkv_bias: bool | None = None      # None: same as `bias` (Qwen2 has qkv biases only)
    qk_norm: bool = False
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    extra: dict = field(default_factory=dict)  # free-form notes (source, chat template…)

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
        self.validate()

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
        if self.rope_scaling:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("default", "linear", "llama3"):
                raise CentelhaError(f"rope scaling {kind!r} is not supported "
                                    "(supported: default, linear, llama3)")
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
        preset = FAMILY_PRESETS.get(family, {})
        return cls(**{**preset, **values})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise CentelhaError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise CentelhaError(f"{path} must hold a JSON object")
        return cls.from_dict(values)
