"""Instruction SFT: next-token loss on the assistant tokens of chat conversations.

The data (`finetune.sft_data`) is rendered with the model's own chat template and masked
turn by turn, so only assistant tokens (and their end-of-turn token) are scored. A
micro-batch is a set of conversations padded on the right to the longest, or, with
`objective.pack`, rows of `max_length` positions into which whole conversations were
packed once, up front. The count is the batch's scored tokens, so a step's gradient is
the mean over every scored token of the step, however the masks fall. The held-out loss is
the same measure over `val_data` (or a `held_out` share of the lines).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from centelha.finetune.sft_data import SFTExample, collate, load_sft, pack
from centelha.model import Transformer
from centelha.objectives.base import Batch, Walk
from centelha.objectives.config import ObjectiveConfig
from centelha.objectives.language import (
    LanguageModelling,
    held_out_loss,
    train_and_held_out,
)
from centelha.objectives.start import apply_scope
from centelha.tokenizer import Tokenizer


class SFT(LanguageModelling):
    kind = "sft"

    def __init__(self, body: Transformer, tokenizer: Tokenizer, data: Path,
                 cfg: ObjectiveConfig, lora: dict | None, base_name: str, seed: int):
        super().__init__(body, tokenizer, cfg, base_name)
        train, self.val_examples = train_and_held_out(
            lambda path: load_sft(path, tokenizer, cfg.max_length), data, cfg)
        self.train_examples = train
        self.rows = self._packed(train) if cfg.pack else train
        self.lora = apply_scope(body, body, cfg.scope, lora)
        self.walk = Walk(len(self.rows), seed, [len(e.ids) for e in self.rows])

    def _packed(self, examples: list[SFTExample]) -> list[SFTExample]:
        ids, targets = pack(examples, self.cfg.max_length)
        return [SFTExample(i.tolist(), t.tolist(), f"packed row {n}")
                for n, (i, t) in enumerate(zip(ids, targets, strict=True))]

    def describe(self) -> str:
        tokens = sum(e.scored for e in self.train_examples)
        rows = f" packed into {len(self.rows)} rows" if self.cfg.pack else ""
        return (f"sft on {len(self.train_examples)} conversations{rows} ({tokens:,} assistant "
                f"tokens); held out {len(self.val_examples)}; scope {self.cfg.scope}")

    def draw(self, size: int, rows: slice) -> Batch:
        return _batch([self.rows[i] for i in self.walk.next(size)[rows]])

    def tokens(self, batch: Batch) -> int:
        return int(batch["lengths"].sum())

    def evaluate(self, forward: Callable, batch_size: int, device: torch.device, autocast,
                 world) -> dict[str, float]:
        ordered = sorted(self.val_examples, key=lambda e: len(e.ids))
        batches = [_batch(ordered[i:i + batch_size])
                   for i in range(0, len(ordered), batch_size)]
        return {"val_loss": held_out_loss(forward, batches, device, autocast)}


def _batch(examples: list[SFTExample]) -> Batch:
    ids, targets = collate(examples)
    lengths = torch.tensor([len(e.ids) for e in examples])
    return {"ids": ids, "targets": targets, "lengths": lengths}
