"""What the three language-modelling objectives (pretrain, sft, dpo) share: scoring
targets, evaluating a held-out loss in batches, and publishing the trained model.

Publishing follows the scope: a run that trained everything publishes a checkpoint
folder (config.json, model.safetensors — a hard link to the state's weights, no second
write — and tokenizer.json); a LoRA run publishes its adapter (adapter.json naming the
base it started from, adapter.safetensors), which `load(run_dir)` loads on that base.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from centelha.checkpoint import publish_model
from centelha.errors import CentelhaError
from centelha.evaluate import nll_sum
from centelha.lora import has_lora, save_adapter
from centelha.model import IGNORE, Transformer
from centelha.objectives.base import Batch, Objective, scored
from centelha.tokenizer import Tokenizer


def next_token_loss(forward: Callable, batch: Batch) -> torch.Tensor:
    """Summed negative log-likelihood of the scored targets; where only some positions
    are scored (instruction tuning), logits are computed at those positions only."""
    targets = batch["targets"]
    scored_at = targets != IGNORE
    if bool(scored_at.all()):
        return nll_sum(forward(batch["ids"]), targets)
    return nll_sum(forward(batch["ids"], at=scored_at), targets[scored_at])


class LanguageModelling(Objective):
    """Next-token loss on scored targets, publishing a checkpoint or an adapter."""

    def count(self, batch: Batch) -> float:
        return scored(batch["targets"])

    def loss_sum(self, forward: Callable, batch: Batch) -> torch.Tensor:
        return next_token_loss(forward, batch)

    def publish(self, run_dir: Path, state_weights: Path) -> None:
        publish_language_model(run_dir, state_weights, self.body, self.tokenizer,
                               self.base_name)


def held_out_lines(items: list, share: float, seed: int) -> tuple[list, list]:
    """(train, held out): a `share` of the items chosen by `seed`, both in file order."""
    if len(items) < 2:
        raise CentelhaError("the data needs at least two examples to hold one out; "
                            "give objective.val_data")
    chosen = set(random.Random(seed).sample(range(len(items)),
                                            min(len(items) - 1,
                                                max(1, round(share * len(items))))))
    return ([x for i, x in enumerate(items) if i not in chosen],
            [x for i, x in enumerate(items) if i in chosen])


def train_and_held_out(read: Callable[[str | Path], list], data: Path, cfg) -> tuple[list, list]:
    """The training items and at most `eval_examples` held-out ones: `val_data` if given,
    else a `held_out` share of `data`'s lines."""
    items = read(data)
    if cfg.val_data:
        train, val = items, read(cfg.val_data)
    else:
        train, val = held_out_lines(items, cfg.held_out, cfg.split_seed)
    return train, val[:cfg.eval_examples]


def publish_language_model(run_dir: Path, state_weights: Path, body: Transformer,
                           tokenizer: Tokenizer, base_name: str | None) -> None:
    if has_lora(body):
        # the adapters as the state saved them (whole even when FSDP shards the model)
        save_adapter(body, run_dir, base_name=str(base_name),
                     tensors=load_file(str(state_weights)))
    else:
        publish_model(run_dir, state_weights, body, tokenizer)


@torch.no_grad()
def held_out_loss(forward: Callable, batches: list[Batch], device: torch.device,
                  autocast) -> float:
    """Mean negative log-likelihood per scored token over `batches`."""
    total, count = 0.0, 0
    for batch in batches:
        with autocast():
            total += float(next_token_loss(forward, to_device(batch, device)))
        count += scored(batch["targets"])
    return total / max(count, 1)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}
