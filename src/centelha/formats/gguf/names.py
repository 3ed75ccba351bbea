"""GGUF's tensor names, one table per llama.cpp architecture: ours ↔ theirs + transform.

Import reads each row one way, export the other (see `centelha.formats.table`). What the
rows encode:
- GGUF stores q, k and v (and gate and up) as separate matrices; centelha fuses them
  into `attn.qkv` (and `mlp.fc_in`, gate rows first). `gpt2` files already fuse q/k/v.
- Rotary layout. centelha (like Hugging Face) rotates channel i of a head with channel
  i + head_dim/2 ("rotate half"). llama.cpp's converter permutes the rows of Q and K of
  `llama` models so that each rotated pair is adjacent, for its "normal" rope: those rows
  carry `QUERY_PAIRS` / `KEY_PAIRS`. `qwen2`/`qwen3` files keep the Hugging Face layout
  (llama.cpp runs them with its "neox" rope), so nothing is permuted there.
- A tied head has no `output.weight`; Llama 3's `rope_freqs` is not one of our tensors
  (it comes from the config: see `rope.py`).
"""

from __future__ import annotations

from centelha.formats.table import (
    KEY_PAIRS,
    QUERY_PAIRS,
    SAME,
    Row,
    Stacked,
    Table,
    Transform,
    gate_up_rows,
    qkv_rows,
)

GPT2 = Table("a gpt2 GGUF file", (
    Row("tok_emb.weight", "token_embd.weight"),
    Row("pos_emb.weight", "position_embd.weight"),
    Row("norm_f.{p}", "output_norm.{p}"),
    Row("lm_head.weight", "output.weight"),
    Row("blocks.{i}.norm1.{p}", "blk.{i}.attn_norm.{p}"),
    Row("blocks.{i}.attn.qkv.{p}", "blk.{i}.attn_qkv.{p}"),
    Row("blocks.{i}.attn.proj.{p}", "blk.{i}.attn_output.{p}"),
    Row("blocks.{i}.norm2.{p}", "blk.{i}.ffn_norm.{p}"),
    Row("blocks.{i}.mlp.fc_in.{p}", "blk.{i}.ffn_up.{p}"),
    Row("blocks.{i}.mlp.fc_out.{p}", "blk.{i}.ffn_down.{p}"),
))


def _llama_like(name: str, q: Transform, k: Transform) -> Table:
    """llama, qwen2 and qwen3 files: the same names; `q` and `k` say whether their rows
    are in llama.cpp's rotary layout (llama) or in ours (qwen)."""
    return Table(name, (
        Row("tok_emb.weight", "token_embd.weight"),
        Row("norm_f.weight", "output_norm.weight"),
        Row("lm_head.weight", "output.weight"),
        Row("blocks.{i}.norm1.weight", "blk.{i}.attn_norm.weight"),
        Row("blocks.{i}.attn.qkv.{p}", ("blk.{i}.attn_q.{p}", "blk.{i}.attn_k.{p}",
                                        "blk.{i}.attn_v.{p}"), Stacked(qkv_rows, (q, k, SAME))),
        Row("blocks.{i}.attn.q_norm.weight", "blk.{i}.attn_q_norm.weight"),  # qwen3
        Row("blocks.{i}.attn.k_norm.weight", "blk.{i}.attn_k_norm.weight"),  # qwen3
        Row("blocks.{i}.attn.proj.weight", "blk.{i}.attn_output.weight"),
        Row("blocks.{i}.norm2.weight", "blk.{i}.ffn_norm.weight"),
        Row("blocks.{i}.mlp.fc_in.weight", ("blk.{i}.ffn_gate.weight", "blk.{i}.ffn_up.weight"),
            Stacked(gate_up_rows)),
        Row("blocks.{i}.mlp.fc_out.weight", "blk.{i}.ffn_down.weight"),
    ))


TABLES = {
    "gpt2": GPT2,
    "llama": _llama_like("a llama GGUF file", QUERY_PAIRS, KEY_PAIRS),
    "qwen2": _llama_like("a qwen2 GGUF file", SAME, SAME),
    "qwen3": _llama_like("a qwen3 GGUF file", SAME, SAME),
}
