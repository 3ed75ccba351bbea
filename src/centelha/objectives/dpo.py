"""DPO (Rafailov et al. 2023): preference tuning without a reward model.

For a pair (prompt, chosen y_w, rejected y_l) the loss is
-log σ(β · [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]).

Design choices a reader should know:
- The reference π_ref is the model the run starts from: the same weights with the LoRA
  adapters turned off (`lora.adapters_disabled`), so no second model is held in memory.
  Its log-probabilities are computed once per example, the first time the example is
  drawn, and kept (they never change): after the first epoch a step costs one forward
  and backward, no reference pass. A resumed run computes them again, to the same values.
- A response's log-probability is the *sum* over its scored tokens (the paper and TRL),
  or with `objective.logps: mean` their mean, which removes the pull towards length.
- Chosen and rejected go through the model in one batch (2B rows).
- Plain DPO only asks the chosen answer to beat the rejected one *relative to the
  reference*; both may fall, and on our set (where a rejected answer is often the right
  one buried in chatter, sharing its tokens) they did, and greedy answers got worse.
  `objective.nll_weight` adds the chosen answers' negative log-likelihood per token,
  times the weight (TRL's `rpo_alpha`, Pang et al. 2024), which keeps them likely.
- Logged as TRL names them: `rewards/chosen` = β·(log π − log π_ref) of the chosen
  answers, `rewards/rejected`, `rewards/margins` (their difference) and
  `rewards/accuracies` (the share of pairs whose chosen reward is higher); on the held-out
  pairs the same with an `eval_` prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from centelha.finetune.dpo_data import PreferencePair, read_pairs
from centelha.finetune.sft_data import collate
from centelha.lora import adapters_disabled
from centelha.model import IGNORE, Transformer
from centelha.objectives.base import Batch, Walk
from centelha.objectives.config import ObjectiveConfig
from centelha.objectives.language import LanguageModelling, to_device, train_and_held_out
from centelha.objectives.start import apply_scope
from centelha.tokenizer import Tokenizer


def sequence_logps(forward: Callable, ids: torch.Tensor, targets: torch.Tensor,
                   mean: bool) -> torch.Tensor:
    """Each row's log-probability of its scored targets, summed or averaged (the logits
    are computed at the scored positions only)."""
    scored = targets != IGNORE
    logits = forward(ids, at=scored).float()
    token_logps = -F.cross_entropy(logits, targets[scored], reduction="none")
    rows = scored.nonzero()[:, 0]
    total = torch.zeros(ids.shape[0], device=ids.device).index_add(0, rows, token_logps)
    return total / scored.sum(-1).clamp(min=1) if mean else total


class DPO(LanguageModelling):
    kind = "dpo"

    def __init__(self, body: Transformer, tokenizer: Tokenizer, data: Path,
                 cfg: ObjectiveConfig, lora: dict | None, base_name: str, seed: int):
        super().__init__(body, tokenizer, cfg, base_name)
        train, self.val_pairs = train_and_held_out(
            lambda path: read_pairs(path, tokenizer, cfg.max_length), data, cfg)
        self.train_pairs = train
        self.lora = apply_scope(body, body, cfg.scope, lora)
        self.walk = Walk(len(train), seed, [max(len(p.chosen.ids), len(p.rejected.ids))
                                                 for p in train])
        self.reference: dict[tuple[str, int], tuple[float, float]] = {}
        self._stats: list[torch.Tensor] = []

    def describe(self) -> str:
        return (f"dpo on {len(self.train_pairs)} preference pairs, beta {self.cfg.beta}, "
                f"log-probabilities {'summed' if self.cfg.logps == 'sum' else 'averaged'}; "
                f"held out {len(self.val_pairs)}")

    def draw(self, size: int, rows: slice) -> Batch:
        picked = self.walk.next(size)[rows]
        return self._batch([self.train_pairs[i] for i in picked], "train", picked)

    def _batch(self, pairs: list[PreferencePair], split: str, indices: list[int]) -> Batch:
        ids, targets = collate([p.chosen for p in pairs] + [p.rejected for p in pairs])
        lengths = torch.tensor([len(p.chosen.ids) for p in pairs]
                               + [len(p.rejected.ids) for p in pairs])
        return {"ids": ids, "targets": targets, "lengths": lengths,
                "index": torch.tensor(indices), "split": torch.tensor([split == "val"])}

    def count(self, batch: Batch) -> float:
        return len(batch["index"])

    def tokens(self, batch: Batch) -> int:
        return int(batch["lengths"].sum())

    def _reference(self, forward: Callable, batch: Batch) -> torch.Tensor:
        """(2B,) reference log-probabilities, computed for the examples not seen yet."""
        split = "val" if bool(batch["split"][0]) else "train"
        keys = [(split, int(i)) for i in batch["index"]]
        if any(k not in self.reference for k in keys):
            with torch.no_grad(), adapters_disabled(self.body):
                logps = sequence_logps(forward, batch["ids"], batch["targets"],
                                       self.cfg.logps == "mean").tolist()
            half = len(keys)
            for n, key in enumerate(keys):
                self.reference[key] = (logps[n], logps[half + n])
        chosen, rejected = zip(*(self.reference[k] for k in keys), strict=True)
        return torch.tensor(chosen + rejected, device=batch["ids"].device)

    def _rewards(self, forward: Callable, batch: Batch
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chosen rewards, rejected rewards, the chosen answers' NLL per token)."""
        reference = self._reference(forward, batch)
        summed = sequence_logps(forward, batch["ids"], batch["targets"], mean=False)
        tokens = (batch["targets"] != IGNORE).sum(-1).clamp(min=1)
        policy = summed / tokens if self.cfg.logps == "mean" else summed
        rewards = self.cfg.beta * (policy - reference)
        half = len(batch["index"])
        return rewards[:half], rewards[half:], -(summed[:half] / tokens[:half])

    def loss_sum(self, forward: Callable, batch: Batch) -> torch.Tensor:
        chosen, rejected, chosen_nll = self._rewards(forward, batch)
        self._stats.append(torch.stack([chosen.detach(), rejected.detach()]))
        loss = -F.logsigmoid(chosen - rejected)
        if self.cfg.nll_weight:
            loss = loss + self.cfg.nll_weight * chosen_nll
        return loss.sum()

    def step_metrics(self) -> dict[str, float]:
        if not self._stats:
            return {}
        stats, self._stats = torch.cat(self._stats, dim=1), []
        return _reward_row(stats[0], stats[1], "")

    @torch.no_grad()
    def evaluate(self, forward: Callable, batch_size: int, device: torch.device, autocast,
                 world) -> dict[str, float]:
        chosen, rejected = [], []
        for start in range(0, len(self.val_pairs), batch_size):
            indices = list(range(start, min(start + batch_size, len(self.val_pairs))))
            batch = to_device(self._batch([self.val_pairs[i] for i in indices], "val",
                                          indices), device)
            with autocast():
                c, r, _ = self._rewards(forward, batch)
            chosen.append(c.float())
            rejected.append(r.float())
        c, r = torch.cat(chosen), torch.cat(rejected)
        row = _reward_row(c, r, "eval_")
        return {"val_loss": float(-F.logsigmoid(c - r).mean()), **row}


def _reward_row(chosen: torch.Tensor, rejected: torch.Tensor, prefix: str) -> dict[str, float]:
    return {f"{prefix}rewards/chosen": float(chosen.mean()),
            f"{prefix}rewards/rejected": float(rejected.mean()),
            f"{prefix}rewards/margins": float((chosen - rejected).mean()),
            f"{prefix}rewards/accuracies": float((chosen > rejected).float().mean())}
