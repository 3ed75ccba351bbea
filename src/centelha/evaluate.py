"""Evaluation: perplexity of a model on a text.

Perplexity is exp(mean negative log-likelihood per token). The text is scored in
windows of the model's context (or `window` tokens) that overlap by `window - stride`
positions: every token after the first window is predicted with at least
`window - stride` tokens of context, and each token is counted exactly once. This is the
usual "sliding window" evaluation, so numbers compare with other tools' at equal settings.

`nll_sum` is the one scoring step: the training loss (`train/accumulate.py`), the
validation loss and perplexity all sum it, so they are the same measure (validation
loss = ln perplexity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from centelha.errors import CentelhaError
from centelha.generate import with_bos
from centelha.model import IGNORE, Transformer
from centelha.tokenizer import Tokenizer


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Total negative log-likelihood (nats) of the `targets` that are not IGNORE under
    `logits` (…, vocab): a tensor, so training can backpropagate through it."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def summed_nll(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
               ) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of the `targets` that are not IGNORE, each
    predicted from the `inputs` up to it, and how many were scored."""
    scored = int((targets != IGNORE).sum())
    if not scored:
        return 0.0, 0
    return nll_sum(model(inputs), targets).item(), scored


@dataclass
class Perplexity:
    perplexity: float
    nll: float          # mean negative log-likelihood, nats per token
    tokens: int         # tokens scored

    @property
    def bits_per_token(self) -> float:
        return self.nll / math.log(2)


@torch.inference_mode()
def perplexity(model: Transformer, tokenizer: Tokenizer, text: str, window: int | None = None,
               stride: int | None = None, max_tokens: int | None = None) -> Perplexity:
    """Perplexity of `model` on `text` with a sliding window."""
    ids = with_bos(tokenizer, tokenizer.encode(text))
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise CentelhaError("the text is too short to measure perplexity (fewer than 2 tokens)")
    window = min(window or model.cfg.block_size, model.cfg.block_size)
    stride = stride or window // 2
    if not 0 < stride <= window:
        raise CentelhaError(f"stride must be between 1 and the window ({window})")
    tokens = torch.tensor(ids, device=model.tok_emb.weight.device)
    total, count, scored = 0.0, 0, 1  # token 0 has nothing before it to predict it
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + window, len(ids))
        first = max(scored, begin + 1)  # tokens already scored are not counted twice
        if first < end:
            targets = tokens[begin + 1:end].clone()
            targets[:first - begin - 1] = IGNORE
            window_total, window_count = summed_nll(model, tokens[None, begin:end - 1],
                                                    targets[None])
            total, count, scored = total + window_total, count + window_count, end
        if end == len(ids):
            break
    nll = total / count
    return Perplexity(math.exp(nll), nll, count)
