"""How big a model is: parameters, and floating-point operations per token.

Kept apart from `centelha.model` because they describe a model rather than run it: the
checkpoint writer, the training loop's MFU and `centelha info` use them, and they count
quantized layers too. `centelha.model` re-exports them, so either import works.
"""

from __future__ import annotations

from torch import nn

from centelha.config import ModelConfig


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Distinct parameters of a Transformer (a tied embedding counts once). Quantized layers
    (which hold their weights as buffers) count as the float layers they replace, and are
    not trainable."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    if trainable_only:
        return total
    for name, module in model.named_modules():
        if hasattr(module, "qweight") and not (name == "lm_head" and model.cfg.tie_embeddings):
            bias = module.out_features if module.bias is not None else 0
            total += module.in_features * module.out_features + bias
    return total


def matmul_parameters(cfg: ModelConfig) -> int:
    """Weights that take part in a matrix product per token: every projection + the LM head."""
    attn = cfg.d_model * (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
    attn += cfg.n_head * cfg.head_dim * cfg.d_model
    mlp = (3 if cfg.mlp == "swiglu" else 2) * cfg.d_model * cfg.d_ff
    return cfg.n_layer * (attn + mlp) + cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, int]:
    """Floating-point operations per token at context `seq_len` (PaLM's accounting).

    forward: 2 per matmul weight, plus the attention scores and weighted sum
    (2 · 2 · layers · heads · head_dim · seq_len); training is 3× forward (backward ≈ 2×).
    """
    seq_len = seq_len or cfg.block_size
    n = matmul_parameters(cfg)
    attention = 4 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len
    forward = 2 * n + attention
    return {"forward": forward, "train": 3 * forward, "matmul_params": n}
