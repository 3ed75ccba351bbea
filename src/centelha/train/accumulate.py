"""One optimizer step's gradients from its micro-batches, normalised by the tokens that
count in the whole step.

Every objective's loss is a sum with a count: the negative log-likelihood of the targets
that are scored (a target of -100 is not) and how many there are. The usual recipe,
each micro-batch's mean divided by the number of micro-batches, weighs a micro-batch with
3 scored tokens like one with 300, so with masks (instruction tuning scores only the
answers) the gradient is not that of the batch as a whole. Here the scored tokens of the
whole step, over micro-batches and ranks, are counted first (the targets are known before
any forward pass), and each micro-batch's sum is divided by that global count: the
gradient equals one big batch's, whatever the masks. DDP and FSDP average gradients over
ranks, so each rank multiplies by the world size to undo that average.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from centelha.errors import CentelhaError
from centelha.evaluate import nll_sum
from centelha.model import IGNORE
from centelha.train.distributed import World

Batch = tuple[torch.Tensor, torch.Tensor]  # ids (B, T) and targets (B, T)


def scored_tokens(targets: torch.Tensor) -> int:
    return int((targets != IGNORE).sum())


def accumulate_gradients(forward: Callable[[torch.Tensor], torch.Tensor], batches: list[Batch],
                         world: World, device: torch.device,
                         autocast: Callable[[], AbstractContextManager],
                         sync: Callable[[bool], AbstractContextManager]) -> float:
    """Backpropagate through every micro-batch of one step (`sync(last)`: the context
    that lets gradients synchronise on the last one only); returns the step's mean loss
    per scored token over all ranks."""
    count = world.sum(sum(scored_tokens(y) for _, y in batches), device)
    if not count:
        raise CentelhaError("no target in this step's batches is scored (all are -100)")
    total = 0.0
    for i, (x, y) in enumerate(batches):
        with sync(i == len(batches) - 1):
            with autocast():
                loss = nll_sum(forward(x.to(device)), y.to(device))
            (loss * (world.size / count)).backward()
        total += loss.item()
    return world.sum(total, device) / count
