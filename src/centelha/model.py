"""`Transformer`: the one decoder-only model class, with a KV cache for generation.

Every family is this class with different switches from `ModelConfig`: LayerNorm or
RMSNorm, learned or rotary positions, GELU or SwiGLU MLP, grouped-query attention,
biases, q/k norms, tied embeddings.

Design choices a reader should know:
- Q, K and V come from one fused projection (`attn.qkv`), and SwiGLU's gate and up
  projections from one (`mlp.fc_in`, gate rows first): one matrix product instead of
  three or two, which matters on a CPU. Importers split or join other layouts.
- Attention is `scaled_dot_product_attention`; grouped-query heads use its `enable_gqa`.
- Rotary embeddings use the "rotate half" layout (first half of each head pairs with the
  second half), the layout of Hugging Face checkpoints.
- The KV cache is preallocated for the whole context: decoding writes into it in place,
  so shapes never change from one step to the next.
- Inference in float32 on the CPU uses centelha's C++ kernels (`centelha.kernels`) for
  the small operations where PyTorch's per-call cost dominates: RMSNorm, the SwiGLU gate,
  and, for one new token per row, everything from rotary embedding to attention over the
  cache (`Step.fused`). The PyTorch code beside each call is the reference they are tested
  against, and the path used for training, other dtypes, GPUs, or without a compiler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.kernels import load_kernels


class KVCache:
    """Keys and values of every layer for `batch` rows, up to `max_len` positions each.

    Each row is one sequence with its own length, so rows of different lengths can
    decode together (the engine's batch); a forward call works on a contiguous range of
    rows, so the cache is only ever read and written through views, never copied.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (cfg.n_layer, batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.lengths = [0] * batch  # filled positions of each row

    @property
    def pos(self) -> int:
        """The filled length, when every row has the same one."""
        if len(set(self.lengths)) != 1:
            raise ValueError("rows of this cache have different lengths")
        return self.lengths[0]

    def reset(self, rows: slice = slice(None)) -> None:
        for row in range(len(self.lengths))[rows]:
            self.lengths[row] = 0


@dataclass
class Step:
    """How one forward call meets the cache: computed once, shared by every layer."""
    cache: KVCache | None = None
    rows: slice | None = None
    start: int | None = 0            # the rows' common start, or None when they differ
    positions: torch.Tensor | None = None  # (B, T) when the starts differ
    keys: int = 0                    # how many cached positions the queries attend over
    mask: torch.Tensor | None = None
    causal: bool = True
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    fused: object | None = None      # the kernels module, when one C++ call does attention
    new_positions: torch.Tensor | None = None  # (B,) int64, for `fused`
    rope_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # (B or 1, D), for `fused`


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


def inference_kernels(x: torch.Tensor, *params: torch.Tensor):
    """The C++ kernels module when an operation on `x` and `params` can use it (float32 on
    the CPU, no gradient to record), else None."""
    if x.dtype is not torch.float32 or not x.is_cpu:  # attribute checks: this runs ~90× a token
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return None
    return load_kernels()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = inference_kernels(x, self.weight)
        if kernels is not None:
            return kernels.rms_norm(x.contiguous(), self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


# Queries per call at or below which attention is two batched matrix products instead of
# SDPA: PyTorch's CPU flash kernel costs milliseconds for one query over a cache view.
DECODE_TOKENS = 4


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of a few new queries over the cache. Grouped-query heads are handled by
    folding each group's queries together, so keys and values are never copied."""
    B, H, T, D = q.shape
    kv_heads = k.shape[1]
    group = H // kv_heads
    q = q.reshape(B, kv_heads, group * T, D)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))  # (B, kv, group·T, S)
    if mask is not None:
        if mask.dim() == 2:  # (T, S): the same for every row and head
            mask = mask[None, None]
        # (B, 1, T, S) → repeat over the group's queries, which are laid out group-major
        mask = mask.expand(B, 1, T, mask.shape[-1]).repeat(1, 1, group, 1)
        scores = scores.masked_fill(~mask, float("-inf"))
    y = scores.softmax(-1) @ v
    return y.reshape(B, H, T, D)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.q_size = cfg.n_head * cfg.head_dim
        self.kv_size = cfg.n_kv_head * cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.proj = nn.Linear(self.q_size, cfg.d_model, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        heads = self.qkv(x).view(B, T, cfg.n_head + 2 * cfg.n_kv_head, cfg.head_dim)
        if step.fused is not None and not cfg.qk_norm:
            return self.proj(self.attend_fused(heads.view(B, -1, cfg.head_dim), step))
        qk, v = heads.split([cfg.n_head + cfg.n_kv_head, cfg.n_kv_head], dim=2)
        if cfg.qk_norm:
            q, k = qk.split([cfg.n_head, cfg.n_kv_head], dim=2)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=2)
            if step.fused is not None:
                heads = torch.cat([qk, v], dim=2).view(B, -1, cfg.head_dim)
                return self.proj(self.attend_fused(heads, step))
        if step.rope is not None:  # queries and keys rotate together: one set of ops
            qk = apply_rope(qk, *step.rope)
        q, k = (t.transpose(1, 2) for t in qk.split([cfg.n_head, cfg.n_kv_head], dim=2))
        v = v.transpose(1, 2)
        if step.cache is not None:
            k, v = self.remember(k, v, step)
        if step.cache is not None and T <= DECODE_TOKENS and not step.causal:
            y = decode_attention(q, k, v, step.mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=step.mask, is_causal=step.causal,
                dropout_p=cfg.dropout if self.training else 0.0,
                enable_gqa=cfg.n_kv_head != cfg.n_head,
            )
        y = y.transpose(1, 2).reshape(B, T, self.q_size)
        return self.proj(y)

    def attend_fused(self, heads: torch.Tensor, step: Step) -> torch.Tensor:
        """The C++ kernel's version of the path above for one new token per row: rotary,
        cache write and attention in one call. Returns (B, 1, q_size)."""
        cos, sin = step.rope_rows
        y = step.fused.attend_one(heads, cos, sin, step.cache.k, step.cache.v, self.layer,
                                  step.rows.start, step.new_positions, self.cfg.n_head,
                                  self.cfg.n_kv_head)
        return y.view(heads.shape[0], 1, self.q_size)

    def remember(self, k: torch.Tensor, v: torch.Tensor, step: Step):
        """Write the new keys/values into the cache; return all the keys/values to attend."""
        cache_k = step.cache.k[self.layer, step.rows]
        cache_v = step.cache.v[self.layer, step.rows]
        if step.start is not None:
            end = step.start + k.shape[2]
            cache_k[:, :, step.start:end] = k
            cache_v[:, :, step.start:end] = v
        else:
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            cache_k[rows, :, step.positions] = k.transpose(1, 2)
            cache_v[rows, :, step.positions] = v.transpose(1, 2)
        cache_k, cache_v = cache_k[:, :, :step.keys], cache_v[:, :, :step.keys]
        if cache_k.dtype != k.dtype:  # a float16 cache under float32 activations
            return cache_k.to(k.dtype), cache_v.to(k.dtype)
        return cache_k, cache_v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        width = 2 * cfg.d_ff if self.swiglu else cfg.d_ff
        self.fc_in = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        kernels = inference_kernels(h) if self.swiglu else None
        if kernels is not None:
            h = kernels.swiglu(h)
        elif self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's GELU
        return self.fc_out(h)


class Block(nn.Module):
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


class Transformer(nn.Module):
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False,
                rows: slice | None = None):
        """Logits for token ids `idx` (B, T); with `targets`, also the mean cross-entropy.

        With a `cache`, `idx` continues the sequences in cache rows `rows` (default: all
        of them, B rows from the first), each from its own length, and those rows grow
        by T. `last_only` computes logits for the final position only (generation).
        """
        B, T = idx.shape
        step = self.plan(B, T, cache, rows, idx.device)
        x = self.tok_emb(idx)
        positions = step.positions if step.start is None else None
        if self.cfg.pos == "learned":
            if positions is None:
                positions = torch.arange(step.start, step.start + T, device=idx.device)
            x = x + self.pos_emb(positions)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, step)
        if cache is not None:
            for row in range(len(cache.lengths))[step.rows]:
                cache.lengths[row] += T
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(self.norm_f(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=-100)
        return logits, loss

    def plan(self, B: int, T: int, cache: KVCache | None, rows: slice | None,
             device: torch.device) -> Step:
        """Positions, cache slots and attention mask of one forward call."""
        if cache is None:
            if T > self.cfg.block_size:
                raise CentelhaError(f"sequence of {T} tokens is longer than the context "
                                    f"({self.cfg.block_size} tokens)")
            step = Step(causal=T > 1)
            if self.cfg.pos == "rope":
                cos, sin = self.rope(0, T)
                step.rope = (cos[:, None], sin[:, None])
            return step
        rows = rows if rows is not None else slice(0, B)
        starts = cache.lengths[rows]
        if len(starts) != B:
            raise ValueError(f"{B} inputs for {len(starts)} cache rows")
        if max(starts) + T > cache.max_len:
            raise CentelhaError(f"sequence of {max(starts) + T} tokens is longer than the "
                                f"context ({cache.max_len} tokens)")
        keys = max(starts) + T
        fused = self.decode_kernels(T, cache)
        if len(set(starts)) == 1:
            start = starts[0]
            step = Step(cache, rows, start, keys=keys, causal=start == 0 and T > 1)
            if start > 0 and T > 1:
                # new queries see every cached position and the causal part of their block
                step.mask = torch.ones(T, keys, dtype=torch.bool, device=device).tril(start)
            if self.cfg.pos == "rope":
                cos, sin = self.rope(start, T)
                step.rope = (cos[:, None], sin[:, None])  # (T, 1, D): over (B, T, heads, D)
            return self.fuse(step, fused, starts)
        first = torch.tensor(starts, device=device)[:, None]
        positions = first + torch.arange(T, device=device)
        mask = None
        if fused is None:  # the kernel masks by each row's position itself
            mask = (torch.arange(keys, device=device) <= positions[:, :, None])[:, None]
        step = Step(cache, rows, None, positions, keys, mask, causal=False)
        if self.cfg.pos == "rope":
            cos, sin = self.rope(0, keys)
            step.rope = (cos[positions][:, :, None], sin[positions][:, :, None])  # (B, T, 1, D)
        return self.fuse(step, fused, starts)

    def decode_kernels(self, T: int, cache: KVCache):
        """The C++ kernels when this call is one new token per row on a float32 model with a
        float32/float16 CPU cache, no gradient wanted; else None."""
        if T == 1 and not torch.is_grad_enabled() and cache.k.device.type == "cpu" \
                and cache.k.dtype in (torch.float32, torch.float16) \
                and self.tok_emb.weight.dtype == torch.float32:
            return load_kernels()
        return None

    def fuse(self, step: Step, fused, starts: list[int]) -> Step:
        """Give the step what the attention kernel needs: each row's new position and its
        rotary rows."""
        step.fused = fused
        if fused is not None:
            step.new_positions = torch.tensor(starts, dtype=torch.long)
            empty = step.cache.k.new_empty(0)
            step.rope_rows = tuple(t.reshape(-1, self.cfg.head_dim) for t in step.rope) \
                if step.rope else (empty, empty)
        return step


def count_parameters(model: Transformer, trainable_only: bool = False) -> int:
    """Distinct parameters (a tied embedding counts once). Quantized layers (which hold
    their weights as buffers) count as the float layers they replace, and are not
    trainable."""
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
