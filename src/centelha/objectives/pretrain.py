"""Pretraining (and continued pretraining): next-token prediction on a prepared corpus.

Batches are random windows of the token shards, drawn with the run's data generator
(saved with the state), so the order is what it always was: a run resumed from a state
continues bit for bit. Validation reads fixed windows and draws nothing. Starting from a
model (`train.init_from`), the data must have been prepared with that model's tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from centelha.data import TokenWindows, load_meta
from centelha.errors import CentelhaError
from centelha.evaluate import summed_nll
from centelha.model import Transformer
from centelha.objectives.base import Batch
from centelha.objectives.language import LanguageModelling
from centelha.tokenizer import Tokenizer


class Pretrain(LanguageModelling):
    kind = "pretrain"

    def __init__(self, body: Transformer, tokenizer: Tokenizer, data_dir: Path,
                 sampler: torch.Generator, base_name: str | None, eval_batches: int):
        super().__init__(body, tokenizer, None, base_name)
        self.meta = load_meta(data_dir)
        if base_name is not None:
            _check_same_tokenizer(data_dir, tokenizer)
        self.baseline = self.meta.get("unigram_val_loss")
        block = body.cfg.block_size
        self.train_data = TokenWindows(data_dir, "train", block)
        self.val_data = TokenWindows(data_dir, "val", block)
        self.sampler, self.eval_batches = sampler, eval_batches

    def describe(self) -> str:
        return f"next-token prediction on {self.train_data.tokens:,} training tokens"

    def draw(self, size: int, rows: slice) -> Batch:
        x, y = self.train_data.sample(size, self.sampler, rows)
        return {"ids": x, "targets": y}

    def tokens(self, batch: Batch) -> int:
        return batch["ids"].numel()

    @torch.no_grad()
    def evaluate(self, forward: Callable, batch_size: int, device: torch.device, autocast,
                 world) -> dict[str, float]:
        """Mean next-token cross-entropy over the first `eval_batches` batches of val
        windows. In a world of N ranks a batch is N × batch_size windows, each rank
        scoring its share."""
        totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, token count
        for x, y in self.val_data.sequential(batch_size * world.size, self.eval_batches):
            if world.distributed and len(y) < batch_size * world.size:
                break  # a short last batch would leave some rank with nothing to score
            rows = world.rows(batch_size) if world.distributed else slice(None)
            with autocast():
                nll, count = summed_nll(forward, x[rows].to(device), y[rows].to(device))
            totals += torch.tensor([nll, count], dtype=torch.float64, device=device)
        if world.distributed:
            torch.distributed.all_reduce(totals)
        loss = float(totals[0] / totals[1].clamp(min=1))
        return {"val_loss": loss, "val_ppl": math.exp(loss)}


def _check_same_tokenizer(data_dir: Path, tokenizer: Tokenizer) -> None:
    data_tokenizer = Path(data_dir) / "tokenizer.json"
    if data_tokenizer.is_file() and \
            data_tokenizer.read_text(encoding="utf-8") != tokenizer.to_str():
        raise CentelhaError(f"{data_dir} was prepared with another tokenizer than the model's; "
                            "prepare it with the model's tokenizer (centelha finetune "
                            "pretrain does this)")
