"""A GGUF file's tensors -> centelha's state dict, and a model's state dict -> GGUF's
tensors: both through the architecture's name table (`names.py`).

Import checks every tensor's shape against the one the config implies before reading
any data, and refuses a file with tensors the architecture does not use (a variant
centelha would silently run wrong). With `keep_quantized`, matrices in a block type
centelha's quantized layers take stay `QuantizedRows`; with `shapes_only`, nothing is read
at all and meta tensors come back (the model card is made from them).
"""

from __future__ import annotations

import torch

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.blocks import Matrix
from centelha.formats.gguf.container import GGUFFile, printable
from centelha.formats.gguf.names import TABLES
from centelha.formats.gguf.rope import llama3_factors
from centelha.model import Transformer


class _Taker:
    """Reads tensors by GGUF name, after checking the shape the config implies (before any
    data is read), and remembers which tensors were used. With `shapes_only` it hands out
    meta tensors: the same checks, no data read."""

    def __init__(self, gguf: GGUFFile, arch: str, keep_quantized: bool = False,
                 shapes_only: bool = False):
        self.gguf, self.arch, self.used = gguf, arch, {"rope_freqs.weight"}
        self.keep_quantized, self.shapes_only = keep_quantized, shapes_only

    def __call__(self, name: str, shape: tuple[int, ...]) -> Matrix:
        info = self.gguf.tensors.get(name)
        if info is None:
            raise CentelhaError(f"{self.gguf.path} lacks the tensor {name} (needed by a "
                                f"{self.arch} model)")
        if info.shape != shape:
            raise CentelhaError(f"{self.gguf.path}: tensor {name} has shape {info.shape}, the "
                                f"metadata implies {shape}")
        self.used.add(name)
        if self.shapes_only:
            return torch.empty(shape, device="meta")
        if self.keep_quantized and name != "token_embd.weight":  # embeddings are looked up
            raw = self.gguf.raw_rows(name)
            if raw is not None:
                return raw
        return self.gguf.tensor(name)


def gguf_to_tensors(gguf: GGUFFile, cfg: ModelConfig, keep_quantized: bool = False,
                    shapes_only: bool = False) -> dict[str, Matrix]:
    """Our state dict (tied head left out, unless kept quantized) from the file's tensors."""
    arch = cfg.extra["gguf_architecture"]
    take = _Taker(gguf, arch, keep_quantized, shapes_only)
    out = TABLES[arch].to_ours(cfg, take)
    if cfg.tie_embeddings and keep_quantized:  # the head reads the embedding's blocks
        head = gguf.raw_rows("token_embd.weight")
        if head is not None:
            out["lm_head.weight"] = head
    take.used.add("output.weight")  # tied: a byte-for-byte copy of the embedding
    unused = sorted(set(gguf.tensors) - take.used)
    if unused:
        raise CentelhaError(f"{gguf.path} has tensors a {arch} model does not use "
                            f"({', '.join(map(printable, unused[:3]))}): a variant centelha "
                            "does not support")
    return out


def tensors_to_gguf(model: Transformer, arch: str) -> dict[str, torch.Tensor]:
    """The model's tensors under GGUF names, in GGUF's layout, float32."""
    cfg = model.cfg
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()
            if not (cfg.tie_embeddings and k == "lm_head.weight")}
    out = TABLES[arch].to_theirs(cfg, ours)
    if cfg.rope_kind == "llama3":
        out["rope_freqs.weight"] = torch.from_numpy(
            llama3_factors(cfg.rope_scaling, cfg.rope_theta, cfg.head_dim))
    return {k: v.contiguous() for k, v in out.items()}
