"""`Transformer`: the one decoder-only model class, the reference for every faster path.

Every family is this class with different switches from `ModelConfig`: LayerNorm or
RMSNorm, learned or rotary positions, GELU or SwiGLU MLP, grouped-query attention,
biases, q/k norms, tied embeddings. Read top to bottom: norms, rotary positions,
attention, MLP, block, the model.

Design choices a reader should know:
- Q, K and V come from one fused projection (`attn.qkv`), and SwiGLU's gate and up
  projections from one (`mlp.fc_in`, gate rows first): one matrix product instead of
  three or two, which matters on a CPU. Importers split or join other layouts.
- Attention is `scaled_dot_product_attention`; grouped-query heads use its `enable_gqa`.
- Rotary embeddings use the "rotate half" layout (first half of each head pairs with the
  second half), the layout of Hugging Face checkpoints.
- What generation adds lives in `centelha.runtime`: the KV cache, the per-call plan
  (`Step`), faster attention for decoding (`Step.attend`), and the C++ kernels RMSNorm and
  the SwiGLU gate use in float32 inference on a CPU. The PyTorch code here is what they are
  tested against, and the path for training, other dtypes, GPUs, or no compiler.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.runtime import KVCache, Step, inference_kernels, plan
from centelha.sizes import count_parameters, flops_per_token, matmul_parameters  # noqa: F401 - re-exported

IGNORE = -100  # a target the loss skips: a position that is not scored (ignore_index)


# -- norms ----------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / rms(x) · weight over the last dimension (Llama's norm: no mean, no bias)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = inference_kernels(x, self.weight)  # float32 inference on a CPU: one C++ call
        if kernels is not None:
            return kernels.rms_norm(x.contiguous(), self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


# -- rotary positions -----------------------------------------------------------------------
def rope_inverse_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """θ_i = base^(-2i/d) for each pair of channels of a head, with Llama-3's or linear
    context scaling when the config asks for it."""
    half = torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** half)
    if cfg.rope_kind == "linear":
        return inv_freq / cfg.rope_scaling["factor"]
    if cfg.rope_kind == "llama3":
        return llama3_scaled(inv_freq, cfg.rope_scaling)
    return inv_freq


def llama3_scaled(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1's long-context rule: long wavelengths slowed down by `factor`, short ones
    kept, the band in between blended smoothly."""
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    original = scaling.get("original_max_position_embeddings", 8192)
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(medium, blended, scaled)


def rope_tables(inv_freq: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin for positions 0…length-1, shape (length, head_dim), in float64.

    The sin table carries the rotation's sign (−sin on the first half, +sin on the second),
    so `apply_rope` needs one roll instead of a split, a negation and a concatenation.
    """
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq.double())
    return torch.cat([angles, angles], dim=-1).cos(), torch.cat([-angles, angles], dim=-1).sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x (..., D) by their position's angle (the tables
    broadcast over x: (T, 1, D) for x laid out (B, T, heads, D)). Pair (a, b) becomes
    (a·cos − b·sin, b·cos + a·sin): rolling x by d/2 brings each partner into place."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


# -- attention, MLP, block ------------------------------------------------------------------
class Attention(nn.Module):
    """Causal self-attention with grouped-query heads, optional q/k norms and rotary
    positions, over the new tokens and, with a cache, the cached positions of each row."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer  # which slice of the KV cache is this layer's
        self.q_size = cfg.n_head * cfg.head_dim
        self.kv_size = cfg.n_kv_head * cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.proj = nn.Linear(self.q_size, cfg.d_model, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        """(B, T, d_model) → (B, T, d_model)."""
        cfg = self.cfg
        B, T, _ = x.shape
        heads = self.qkv(x).view(B, T, cfg.n_head + 2 * cfg.n_kv_head, cfg.head_dim)
        if cfg.qk_norm:
            q, k, v = heads.split([cfg.n_head, cfg.n_kv_head, cfg.n_kv_head], dim=2)
            heads = torch.cat([self.q_norm(q), self.k_norm(k), v], dim=2)
        if step.attend is not None:  # the runtime's faster equivalent of the lines below
            return self.proj(step.attend(self, heads, step))
        q, k, v = self.queries_keys_values(heads, step)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, is_causal=step.causal,
                                           dropout_p=cfg.dropout if self.training else 0.0,
                                           enable_gqa=cfg.n_kv_head != cfg.n_head)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.q_size))

    def queries_keys_values(self, heads: torch.Tensor, step: Step):
        """q (B, n_head, T, D) rotated to their positions, and k, v (B, n_kv_head, S, D):
        the new keys (rotated) and values, after the cached ones when there is a cache."""
        cfg = self.cfg
        qk, v = heads.split([cfg.n_head + cfg.n_kv_head, cfg.n_kv_head], dim=2)
        if step.rope is not None:  # queries and keys rotate together: one set of operations
            qk = apply_rope(qk, *step.rope)
        q, k = qk.split([cfg.n_head, cfg.n_kv_head], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if step.cache is not None:
            k, v = step.remember(self.layer, k, v)
        return q, k, v


class MLP(nn.Module):
    """GPT-2's GELU MLP, or SwiGLU: fc_out(silu(gate) · up) with gate and up from `fc_in`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        width = 2 * cfg.d_ff if self.swiglu else cfg.d_ff
        self.fc_in = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        kernels = inference_kernels(h) if self.swiglu else None  # one C++ call, as in RMSNorm
        if kernels is not None:
            h = kernels.swiglu(h)
        elif self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's GELU
        return self.fc_out(h)


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg, layer)
        self.norm2 = make_norm(cfg, cfg.d_model)
        self.mlp = MLP(cfg)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), step))
        return x + self.drop(self.mlp(self.norm2(x)))

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        # a module call per use costs microseconds per layer in decode: only when it acts
        return F.dropout(x, self.dropout, True) if self.training and self.dropout else x


# -- the model ------------------------------------------------------------------------------
class Transformer(nn.Module):
    """A decoder-only language model: token ids in, next-token logits out.

    Token embedding (+ learned positions for GPT-2), `n_layer` pre-norm `Block`s, a final
    norm and the LM head (tied to the embedding when `cfg.tie_embeddings`). Which norm,
    positional scheme, MLP, head grouping, biases and q/k norms: all from `cfg`
    (`ModelConfig`), so every family is this one class.

    For generation, `new_cache` makes a `KVCache` and `forward` continues its rows;
    `Engine` drives both.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos == "learned":
            self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        # Rotary tables are made on first use, in the model's dtype and device, and grow on
        # demand: imported models declare contexts of 128k positions.
        self._rope_tables = (torch.zeros(0), torch.zeros(0))
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg, cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled down so the residual stream's variance stays put.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.fc_out.weight")):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    @classmethod
    def from_tensors(cls, cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> Transformer:
        """A model holding `tensors` (centelha names), built without a random init: the
        modules are made on the meta device and the tensors are assigned, not copied."""
        with torch.device("meta"):
            model = cls(cfg)
        expected = {k for k in model.state_dict() if not (cfg.tie_embeddings
                                                          and k == "lm_head.weight")}
        given = set(tensors) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        if missing or unexpected:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise CentelhaError(f"the weights do not match the config: {detail}")
        own = model.state_dict()
        for name in expected:
            if tuple(tensors[name].shape) != tuple(own[name].shape):
                raise CentelhaError(f"weight {name} has shape {tuple(tensors[name].shape)}, the "
                                    f"config implies {tuple(own[name].shape)}")
        model.load_state_dict({k: tensors[k] for k in expected}, strict=False, assign=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.tok_emb.weight
        return model.eval()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def rope(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for positions start…start+length-1, extending the tables if needed."""
        cos, sin = self._rope_tables
        weight = self.tok_emb.weight
        stale = cos.dtype != weight.dtype or cos.device != weight.device
        if stale or start + length > cos.shape[0]:
            size = min(self.cfg.block_size, max(2 * (start + length), 2048))
            with torch.inference_mode(False):  # tables made while generating serve training too
                cos, sin = rope_tables(rope_inverse_frequencies(self.cfg), size)
                self._rope_tables = cos, sin = (cos.to(weight), sin.to(weight))
        return cos[start:start + length], sin[start:start + length]

    def new_cache(self, batch: int = 1, max_len: int | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """A cache for `batch` rows of `max_len` positions, in the model's dtype unless
        `dtype` says otherwise (float16 halves the memory and what decode reads per token)."""
        max_len = max_len or self.cfg.block_size
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch, min(max_len, self.cfg.block_size), dtype or p.dtype,
                       p.device)

    def trunk(self, idx: torch.Tensor, step: Step) -> torch.Tensor:
        """The residual stream after the last block (B, T, d_model), before the final norm."""
        x = self.tok_emb(idx)
        if self.cfg.pos == "learned":
            x = x + self.pos_emb(step.position_ids(idx.shape[1], idx.device))
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, step)
        return x

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The final norm's output for `idx` (B, T, d_model), no cache: the features a
        classification head reads in place of the LM head."""
        B, T = idx.shape
        return self.norm_f(self.trunk(idx, plan(self, B, T, None, None, idx.device)))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False,
                rows: slice | None = None, at: torch.Tensor | None = None):
        """Logits (B, T, vocab) for token ids `idx` (B, T); with `targets` (B, T, -100 = not
        scored), the pair (logits, mean cross-entropy).

        With a `cache`, `idx` continues the sequences in cache rows `rows` (default: all
        of them, B rows from the first), each from its own length, and those rows grow
        by T. `last_only` computes logits for the final position only (generation), `at`
        (a (B, T) bool mask) only where it is set, as (N, vocab) in row order: fine-tuning
        scores a fraction of the positions, and the LM head is a fifth of a small
        model's work.
        """
        B, T = idx.shape
        step = plan(self, B, T, cache, rows, idx.device)
        x = self.trunk(idx, step)
        if cache is not None:
            cache.advance(step.rows, T)
        if last_only:
            x = x[:, -1:]
        if at is not None:
            x = x[at]
        logits = self.lm_head(self.norm_f(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=IGNORE)
        return logits, loss
