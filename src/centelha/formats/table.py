"""Name tables: how centelha's tensors map onto another format's, one list used both ways.

A format's table is a list of rows `Row(ours, theirs, transform)`: our tensor `ours` is
their tensor `theirs` (or their several tensors, stacked) after `transform`. Patterns
hold `{i}` for a layer number and `{p}` for `weight` or `bias`. Import runs each row's
transform one way, export runs its inverse, so the two directions read the same rows
and cannot drift apart.

Design choices a reader should know:
- Which of our tensors exist, and their shapes, come from the model itself: the state
  dict of a `Transformer` built on the meta device (no memory, no init), exactly what
  `Transformer.from_tensors` will expect. A table lists every tensor the format can
  hold; a config simply never asks for the rows it does not need (biases, q/k norms).
- Import asks for each of their tensors *with the shape our model implies*, before any
  data is read, so a reader can refuse a wrong shape with the tensor's name (GGUF does).
- Transforms move whole rows only (a transpose aside), so they work unchanged on float
  matrices, meta tensors (shapes only) and GGUF blocks kept quantized (`QuantizedRows`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.blocks import map_rows, stack_rows
from centelha.model import Transformer

Shape = tuple[int, ...]


# -- transforms: theirs -> ours (to_ours) and back (to_theirs) ---------------------------------
class Transform:
    """How their tensor(s) become ours (`to_ours`) and back (`to_theirs`), and which
    shapes theirs have when ours has `shape`. This base is the identity."""

    def to_ours(self, parts: list, cfg: ModelConfig) -> Any:
        return parts[0]

    def to_theirs(self, tensor: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
        return [tensor]

    def their_shapes(self, shape: Shape, cfg: ModelConfig) -> list[Shape]:
        return [shape]


class Transposed(Transform):
    """GPT-2's `Conv1D` keeps a weight as (in, out); `nn.Linear` as (out, in). A bias
    (a vector) is the same both ways, and torch's `.t()` leaves it so."""

    def to_ours(self, parts: list, cfg: ModelConfig) -> torch.Tensor:
        return parts[0].t().contiguous()

    def to_theirs(self, tensor: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
        return [tensor.t().contiguous()]

    def their_shapes(self, shape: Shape, cfg: ModelConfig) -> list[Shape]:
        return [tuple(reversed(shape))]


def rotate_half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head [x0 … x_{h/2-1}, y0 … y_{h/2-1}] -> [x0, y0, x1, y1, …]."""
    return w.reshape(n_heads, 2, -1, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def interleaved_to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse: [x0, y0, x1, y1, …] -> [x0 … x_{h/2-1}, y0 … y_{h/2-1}]."""
    return w.reshape(n_heads, -1, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class RopePairs(Transform):
    """llama.cpp's rotary layout for q or k: the rows each head rotates together are
    adjacent (2i, 2i+1); ours (like Hugging Face's) pairs row i with i + head_dim/2.
    `heads` names the config field that counts the heads (n_head or n_kv_head)."""
    heads: str

    def to_ours(self, parts: list, cfg: ModelConfig) -> Any:
        n = getattr(cfg, self.heads)
        return map_rows(parts[0], lambda rows: interleaved_to_rotate_half(rows, n))

    def to_theirs(self, tensor: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
        return [rotate_half_to_interleaved(tensor, getattr(cfg, self.heads))]


SAME, TRANSPOSED = Transform(), Transposed()
QUERY_PAIRS, KEY_PAIRS = RopePairs("n_head"), RopePairs("n_kv_head")


def qkv_rows(cfg: ModelConfig) -> tuple[int, ...]:
    """Rows of q, k and v in our fused `attn.qkv`."""
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    return q, kv, kv


def gate_up_rows(cfg: ModelConfig) -> tuple[int, ...]:
    """Rows of gate and up in our fused SwiGLU `mlp.fc_in` (gate first)."""
    return cfg.d_ff, cfg.d_ff


@dataclass(frozen=True)
class Stacked(Transform):
    """Ours is their tensors stacked by rows, `sizes(cfg)` rows each; `parts` transforms
    each of them on the way (llama.cpp's layout of q and k, say)."""
    sizes: Callable[[ModelConfig], tuple[int, ...]]
    parts: tuple[Transform, ...] = ()

    def _parts(self, cfg: ModelConfig) -> tuple[Transform, ...]:
        return self.parts or (SAME,) * len(self.sizes(cfg))

    def to_ours(self, parts: list, cfg: ModelConfig) -> Any:
        return stack_rows([t.to_ours([p], cfg) for t, p in zip(self._parts(cfg), parts,
                                                                strict=True)])

    def to_theirs(self, tensor: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
        pieces = tensor.split(list(self.sizes(cfg)))
        return [t.to_theirs(p, cfg)[0] for t, p in zip(self._parts(cfg), pieces, strict=True)]

    def their_shapes(self, shape: Shape, cfg: ModelConfig) -> list[Shape]:
        return [(rows, *shape[1:]) for rows in self.sizes(cfg)]


# -- rows and tables ------------------------------------------------------------------------
# what a placeholder in a pattern stands for: a layer number, a weight or a bias
PLACEHOLDERS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)"}


@dataclass(frozen=True)
class Row:
    """Our tensor `ours` is `theirs` (one name, or a tuple of names for `Stacked`)
    after `transform`. In both, `{i}` stands for the layer and `{p}` for `weight` or
    `bias` (the same transform serves both: vectors have only rows)."""
    ours: str
    theirs: str | tuple[str, ...]
    transform: Transform = SAME

    def match(self, ours: str) -> dict[str, str] | None:
        """The placeholders' values if `ours` fits this row's pattern, else None."""
        found = re.fullmatch(_regex(self.ours), ours)
        return found.groupdict() if found else None

    def their_names(self, fields: dict[str, str]) -> list[str]:
        names = (self.theirs,) if isinstance(self.theirs, str) else self.theirs
        return [name.format(**fields) for name in names]


@functools.cache
def _regex(pattern: str) -> str:
    regex = re.escape(pattern)
    for name, group in PLACEHOLDERS.items():
        regex = regex.replace(re.escape("{" + name + "}"), group)
    return regex


def model_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    """Every tensor a model of `cfg` holds, with its shape; a tied head is the embedding
    and has no entry of its own."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()
            if not (cfg.tie_embeddings and name == "lm_head.weight")}


@dataclass(frozen=True)
class Table:
    """The rows of one format (`name` says which, in error messages)."""
    name: str
    rows: tuple[Row, ...]

    def find(self, ours: str) -> tuple[Row, dict[str, str]]:
        """The row that names our tensor `ours`, and the values of its placeholders."""
        for row in self.rows:
            fields = row.match(ours)
            if fields is not None:
                return row, fields
        raise CentelhaError(f"{self.name} has no name for the tensor {ours}")

    def to_ours(self, cfg: ModelConfig, fetch: Callable[[str, Shape], Any]) -> dict[str, Any]:
        """Our tensors of a `cfg` model; `fetch(their name, shape we expect)` reads one."""
        out = {}
        for name, shape in model_shapes(cfg).items():
            row, fields = self.find(name)
            wanted = zip(row.their_names(fields), row.transform.their_shapes(shape, cfg),
                         strict=True)
            out[name] = row.transform.to_ours([fetch(n, s) for n, s in wanted], cfg)
        return out

    def to_theirs(self, cfg: ModelConfig,
                  tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`tensors` (our names) under their names, in their layout."""
        out = {}
        for name, tensor in tensors.items():
            row, fields = self.find(name)
            out.update(zip(row.their_names(fields), row.transform.to_theirs(tensor, cfg),
                           strict=True))
        return out
