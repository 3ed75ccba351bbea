"""What the training loop asks of an objective, and what every objective shares.

The loop (`train/loop.py`) owns the optimizer, the schedule, accumulation, distribution,
checkpoints and logs; an `Objective` owns everything that depends on what is learned:
- `model`: the module the loop trains and wraps in DDP/FSDP (the transformer itself, or a
  transformer with a classification head); `body` is the transformer inside it;
- `draw(size, rows)`: one global micro-batch of `size` examples, of which this rank keeps
  `rows` — a dict of tensors (for language modelling `ids` and `targets`, -100 = not
  scored, plus whatever the objective needs);
- `count(batch)` and `loss_sum(forward, batch)`: the loss as a sum with a count (scored
  tokens, examples, or class weights), so the loop divides by the global count of the
  whole step and masks never bias the gradient (`train/accumulate.py`);
- `evaluate(forward, …)`: held-out measures, `val_loss` always among them;
- `publish(run_dir, …)`: what a user loads afterwards (a checkpoint, an adapter, a
  classifier), written after each saved state.

The batch order is part of the objective: example objectives walk a fresh permutation of
their data each epoch, seeded by the run's seed and the epoch, and the position in that
walk is saved with the state, so a resumed run draws exactly the batches it would have.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from centelha.model import IGNORE, Transformer
from centelha.tokenizer import Tokenizer

Batch = dict[str, torch.Tensor]


class Objective:
    kind = "objective"
    model: nn.Module
    body: Transformer
    tokenizer: Tokenizer
    baseline: float | None = None  # a loss to draw on the plot (pretraining: unigram)

    def __init__(self, body: Transformer, tokenizer: Tokenizer, cfg=None,
                 base_name: str | None = None):
        self.model = self.body = body  # a classifier replaces `model` with body + head
        self.tokenizer, self.cfg, self.base_name = tokenizer, cfg, base_name

    def draw(self, size: int, rows: slice) -> Batch:
        raise NotImplementedError

    def count(self, batch: Batch) -> float:
        raise NotImplementedError

    def tokens(self, batch: Batch) -> int:
        """Real (not padding) tokens the batch feeds the model, for tokens/s."""
        raise NotImplementedError

    def loss_sum(self, forward: Callable, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, forward: Callable, batch_size: int, device: torch.device, autocast,
                 world) -> dict[str, float]:
        raise NotImplementedError

    def step_metrics(self) -> dict[str, float]:
        """Measures of the steps since the last call, for the log (DPO's rewards)."""
        return {}

    def publish(self, run_dir: Path, state_weights: Path) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the start of a run: what trains and on what."""
        return self.kind

    # -- what the saved state holds -----------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The weights a state must hold to resume: all of them when everything trains,
        else only the trainable ones (the frozen base comes from `init_from` again)."""
        if self.frozen_base:
            return {n: p.detach().contiguous() for n, p in self.model.named_parameters()
                    if p.requires_grad}
        tensors, seen = {}, set()
        for name, tensor in self.model.state_dict().items():
            if tensor.data_ptr() in seen:
                continue  # a tied LM head is its embedding: stored once (safetensors insists)
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.detach().contiguous()
        return tensors

    @property
    def frozen_base(self) -> bool:
        return any(not p.requires_grad for p in self.model.parameters())

    walk: Walk | None = None  # example objectives: where the run is in its data

    def position(self) -> dict[str, torch.Tensor]:
        """The data position, saved with the state (pretraining's is the sampler's RNG)."""
        return {} if self.walk is None else {"objective.drawn": torch.tensor([self.walk.drawn])}

    def set_position(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.walk is not None:
            self.walk.drawn = int(tensors["objective.drawn"][0])


def scored(targets: torch.Tensor) -> int:
    return int((targets != IGNORE).sum())


class Walk:
    """Examples drawn in a fresh permutation each epoch: epoch e's order depends only on
    (seed, e), and `drawn` (saved with the state) says how far the run has come.

    With `lengths`, batches are grouped by length, so little of a padded batch is
    padding: each window of `GROUP` batches of the permutation is sorted by length, cut
    into batches, and those batches are shuffled back (one random batch of short texts,
    the next of long ones). Every example is still seen once an epoch. The batch size is
    the global micro-batch the loop draws, the same for the whole run (a resumed run
    keeps its global batch), so the order is fixed by (seed, epoch, batch size)."""

    GROUP = 32

    def __init__(self, size: int, seed: int, lengths: list[int] | None = None):
        self.size, self.seed, self.lengths, self.drawn = size, seed, lengths, 0
        self._key: tuple[int, int] | None = None
        self._order: list[int] = []

    def next(self, count: int) -> list[int]:
        picked = []
        for _ in range(count):
            epoch, at = divmod(self.drawn, self.size)
            if self._key != (epoch, count):
                self._key, self._order = (epoch, count), self._epoch_order(epoch, count)
            picked.append(self._order[at])
            self.drawn += 1
        return picked

    def _epoch_order(self, epoch: int, batch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is None:
            return order
        window = batch * self.GROUP
        grouped = []
        for start in range(0, len(order), window):
            part = sorted(order[start:start + window], key=lambda i: self.lengths[i])
            batches = [part[i:i + batch] for i in range(0, len(part), batch)]
            shuffled = torch.randperm(len(batches), generator=generator).tolist()
            grouped.extend(i for b in shuffled for i in batches[b])
        return grouped

    @property
    def epochs(self) -> float:
        return self.drawn / self.size
