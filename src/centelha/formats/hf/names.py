"""Hugging Face tensor names, one table per layout (GPT-2's, and the one Llama, Mistral,
Qwen2 and Qwen3 share): ours ↔ theirs + transform, read one way on import and the other
way on export (see `centelha.formats.table`).

What the rows encode: GPT-2's `Conv1D` weights are stored transposed (in, out); Llama's
q/k/v (and gate/up) are separate matrices that centelha fuses into `attn.qkv` (and
`mlp.fc_in`, gate rows first). Both layouts keep Hugging Face's rotary order, so nothing
is permuted. Names are written with the prefix `save_pretrained` gives them
(`transformer.`, `model.`); import also takes them without it, as a bare base model
(`GPT2Model`, `LlamaModel`) saves them.
"""

from __future__ import annotations

import torch

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.table import TRANSPOSED, Row, Stacked, Table, gate_up_rows, qkv_rows

GPT2 = Table("Hugging Face's GPT-2 layout", (
    Row("tok_emb.weight", "transformer.wte.weight"),
    Row("pos_emb.weight", "transformer.wpe.weight"),
    Row("norm_f.{p}", "transformer.ln_f.{p}"),
    Row("lm_head.weight", "lm_head.weight"),
    Row("blocks.{i}.norm1.{p}", "transformer.h.{i}.ln_1.{p}"),
    Row("blocks.{i}.attn.qkv.{p}", "transformer.h.{i}.attn.c_attn.{p}", TRANSPOSED),
    Row("blocks.{i}.attn.proj.{p}", "transformer.h.{i}.attn.c_proj.{p}", TRANSPOSED),
    Row("blocks.{i}.norm2.{p}", "transformer.h.{i}.ln_2.{p}"),
    Row("blocks.{i}.mlp.fc_in.{p}", "transformer.h.{i}.mlp.c_fc.{p}", TRANSPOSED),
    Row("blocks.{i}.mlp.fc_out.{p}", "transformer.h.{i}.mlp.c_proj.{p}", TRANSPOSED),
))

LAYER = "model.layers.{i}."
ATTN, MLP = LAYER + "self_attn.", LAYER + "mlp."
LLAMA = Table("Hugging Face's Llama layout", (
    Row("tok_emb.weight", "model.embed_tokens.weight"),
    Row("norm_f.weight", "model.norm.weight"),
    Row("lm_head.weight", "lm_head.weight"),
    Row("blocks.{i}.norm1.weight", LAYER + "input_layernorm.weight"),
    Row("blocks.{i}.attn.qkv.{p}", (ATTN + "q_proj.{p}", ATTN + "k_proj.{p}", ATTN + "v_proj.{p}"),
        Stacked(qkv_rows)),
    Row("blocks.{i}.attn.q_norm.weight", ATTN + "q_norm.weight"),  # qwen3
    Row("blocks.{i}.attn.k_norm.weight", ATTN + "k_norm.weight"),  # qwen3
    Row("blocks.{i}.attn.proj.{p}", ATTN + "o_proj.{p}"),
    Row("blocks.{i}.norm2.weight", LAYER + "post_attention_layernorm.weight"),
    Row("blocks.{i}.mlp.fc_in.{p}", (MLP + "gate_proj.{p}", MLP + "up_proj.{p}"),
        Stacked(gate_up_rows)),
    Row("blocks.{i}.mlp.fc_out.{p}", MLP + "down_proj.{p}"),
))


def _layout(model_type: str | None) -> tuple[Table, str]:
    """The table of a `model_type`, and the prefix its names lack in a bare base model."""
    return (GPT2, "transformer.") if model_type == "gpt2" else (LLAMA, "model.")


def hf_to_tensors(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (and fuse) a Hugging Face state dict into centelha's parameter names.
    Shapes are not checked here (`Transformer.from_tensors` does); q/k/v that cannot be
    stacked raise torch's RuntimeError, which the callers turn into one line."""
    table, prefix = _layout(cfg.extra.get("hf_model_type"))

    def fetch(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        for candidate in (name, name.removeprefix(prefix)):
            if candidate in hf:
                return hf[candidate]
        raise CentelhaError(f"weight {name.removeprefix(prefix)!r} is missing from the "
                            "checkpoint")

    return table.to_ours(cfg, fetch)


def tensors_to_hf(tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                  kind: str) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_tensors`, for the Hugging Face `model_type` `kind`."""
    ours = {k: v for k, v in tensors.items()
            if not (cfg.tie_embeddings and k == "lm_head.weight")}
    return {k: v.contiguous() for k, v in _layout(kind)[0].to_theirs(cfg, ours).items()}
