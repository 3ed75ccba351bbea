"""Evaluation: perplexity and bits per byte of a model on a text, a file or a folder.

Perplexity is exp(mean negative log-likelihood per token). The text is scored in
windows of the model's context (or `window` tokens) that overlap by `window - stride`
positions: every token after the first window is predicted with at least
`window - stride` tokens of context, and each token is counted exactly once. This is the
usual "sliding window" evaluation, so numbers compare with other tools' at equal settings.

Per-token figures depend on the tokenizer: a model that cuts Portuguese into more pieces
gets a lower perplexity per piece for the same text. Bits per byte does not: total nats
/ (ln 2 · UTF-8 bytes of the tokens scored), so two models with different tokenizers
compare fairly on the same text. The text is NFC-normalised first (`data.normalize`, as
`centelha prepare` does before training), in the library as in the CLI, so both give the
same number; `normalise=False` scores the string as given.

`nll_sum` is the one scoring step: the training loss (`train/accumulate.py`), the
validation loss and perplexity all sum it, so they are the same measure (validation
loss = ln perplexity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from centelha.data import normalize, read_text
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
    bytes: int = 0      # UTF-8 bytes of the tokens scored

    @property
    def bits_per_token(self) -> float:
        return self.nll / math.log(2)

    @property
    def bits_per_byte(self) -> float:
        return self.nll * self.tokens / (math.log(2) * self.bytes) if self.bytes else math.nan

    def as_dict(self) -> dict:
        return {"nats_per_token": self.nll, "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte, "tokens": self.tokens,
                "bytes": self.bytes}


def pooled(results: list[Perplexity]) -> Perplexity:
    """One figure for several texts: every scored token weighs the same."""
    tokens = sum(r.tokens for r in results)
    nll = sum(r.nll * r.tokens for r in results) / tokens
    return Perplexity(math.exp(nll), nll, tokens, sum(r.bytes for r in results))


@torch.inference_mode()
def perplexity(model: Transformer, tokenizer: Tokenizer, text: str, window: int | None = None,
               stride: int | None = None, max_tokens: int | None = None,
               normalise: bool = True) -> Perplexity:
    """Perplexity and bits per byte of `model` on `text` with a sliding window."""
    if normalise:
        text = normalize(text)
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
    scored_bytes = len(tokenizer.decode_bytes(ids[1:scored]))
    return Perplexity(math.exp(nll), nll, count, scored_bytes)


def text_files(paths: list[Path]) -> list[Path]:
    """The files named, and every `.txt` file under the folders named, in a stable order."""
    found = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not inside:
                raise CentelhaError(f"no .txt files in the folder {path}")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise CentelhaError(f"text file or folder not found: {path}")
    return found


@dataclass
class PerplexityReport:
    files: dict[str, Perplexity]   # per file, by path
    overall: Perplexity

    def as_dict(self) -> dict:
        return {"files": {name: r.as_dict() for name, r in self.files.items()},
                "overall": self.overall.as_dict()}


def perplexity_of_files(model: Transformer, tokenizer: Tokenizer, paths: list[Path],
                        window: int | None = None, stride: int | None = None,
                        max_tokens: int | None = None,
                        progress=lambda name: None) -> PerplexityReport:
    """Perplexity per file and over all of them (files and folders of `.txt` files); each
    file is its own text (no window spans two files). `max_tokens` applies per file."""
    files = {}
    for path in text_files(paths):
        progress(str(path))
        try:
            files[str(path)] = perplexity(model, tokenizer, read_text(path), window, stride,
                                          max_tokens)
        except CentelhaError as e:
            raise CentelhaError(f"{path}: {e}") from None
    return PerplexityReport(files, pooled(list(files.values())))
