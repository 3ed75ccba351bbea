"""One optimizer step's gradients from its micro-batches, normalised by what counts in
the whole step.

Every objective's loss is a sum with a count (`objectives.base`): for language models
the negative log-likelihood of the targets that are scored (a target of -100 is not) and
how many there are; for a classifier the weighted cross-entropy and the sum of weights.
The usual recipe, each micro-batch's mean divided by the number of micro-batches, weighs
a micro-batch with 3 scored tokens like one with 300, so with masks (instruction tuning
scores only the answers) the gradient is not that of the batch as a whole. Here the
counts of the whole step, over micro-batches and ranks, are summed first (they are known
before any forward pass), and each micro-batch's sum is divided by that global count: the
gradient equals one big batch's, whatever the masks. DDP and FSDP average gradients over
ranks, so each rank multiplies by the world size to undo that average.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from centelha.errors import CentelhaError
from centelha.objectives.base import Batch, Objective
from centelha.train.distributed import World


def accumulate_gradients(objective: Objective, forward: Callable, batches: list[Batch],
                         world: World, device: torch.device,
                         autocast: Callable[[], AbstractContextManager],
                         sync: Callable[[bool], AbstractContextManager]) -> float:
    """Backpropagate through every micro-batch of one step (`sync(last)`: the context
    that lets gradients synchronise on the last one only); returns the step's mean loss
    per unit of count (scored token, example) over all ranks."""
    count = world.sum(sum(objective.count(b) for b in batches), device)
    if not count:
        raise CentelhaError("nothing in this step's batches is scored (every target is -100)")
    total = 0.0
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        with sync(i == len(batches) - 1):
            with autocast():
                loss = objective.loss_sum(forward, batch)
            (loss * (world.size / count)).backward()
        total += loss.item()
    return world.sum(total, device) / count
