"""AdamW with decay / no-decay parameter groups, and the learning-rate schedule.

Weight decay applies to matrices (projections, embeddings) only; biases and norm gains
are left alone, as in GPT-2 and nanoGPT. The schedule is a pure function of the step
(linear warmup, then cosine down to `min_lr`), so resuming needs only the step count.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from centelha.train.config import TrainConfig


def decay_split(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], ...]:
    """The trainable (name, parameter) pairs that decay (matrices) and those that do not."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [(n, p) for n, p in named if p.dim() >= 2], [(n, p) for n, p in named if p.dim() < 2]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = decay_split(model)
    return [{"params": [p for _, p in decay], "weight_decay": weight_decay},
            {"params": [p for _, p in no_decay], "weight_decay": 0.0}]


def param_names(model: nn.Module) -> list[str]:
    """Parameter names in the order the optimizer numbers them (decay group, then no-decay)."""
    decay, no_decay = decay_split(model)
    return [n for n, _ in decay + no_decay]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device,
                   fused: bool = True) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where this PyTorch supports it for the device
    (`fused=False` for sharded parameters, which the CPU's fused kernel does not take)."""
    groups = param_groups(model, cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """LR for optimizer step `step` (0-based): warmup, cosine decay, then flat at min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
