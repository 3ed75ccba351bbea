"""Objectives: what the one training loop learns (pretrain, classify, sft, dpo).

    from centelha.objectives import make_objective
    objective = make_objective(run_cfg, data, sampler)   # the model, its data, its loss

- `config`      `ObjectiveConfig`: the `objective:` section (kind, scope, data options)
- `base`        `Objective`: what the loop asks of each (draw, count, loss_sum, evaluate,
                publish); `Walk`, the epoch order of example data
- `start`       `train.init_from` or random weights; scopes (full, lora, head, last-k)
- `language`    what the three language-model objectives share
- `pretrain`    next-token prediction on prepared token shards
- `classifier`  `SequenceClassifier` (a head on the hidden state) and `load_classifier`
- `classify`    labelled texts, class-weighted cross-entropy, accuracy and F1
- `sft`         chat conversations, loss on assistant tokens
- `dpo`         preference pairs against the adapters-off reference
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from centelha.errors import CentelhaError
from centelha.objectives.base import Objective
from centelha.objectives.config import KINDS, ObjectiveConfig
from centelha.objectives.start import apply_scope, starting_model


def make_objective(run_cfg, data: str | Path | None, sampler: torch.Generator) -> Objective:
    """The run's objective, holding the model it trains (on the CPU, before any move)."""
    cfg: ObjectiveConfig = run_cfg.objective
    init_from = run_cfg.train.init_from
    if cfg.kind != "pretrain" and not init_from:
        raise CentelhaError(f"a {cfg.kind} run fine-tunes a model: set train.init_from "
                            "(a registry name, a folder or a GGUF file)")
    if data is None or not Path(data).exists():
        raise CentelhaError(f"data not found: {data}")
    body, tokenizer = starting_model(run_cfg.model, init_from, Path(data) if cfg.kind ==
                                     "pretrain" else None)
    seed = run_cfg.train.seed
    # no example may be longer than the model's context
    cfg = dataclasses.replace(cfg, max_length=min(cfg.max_length, body.cfg.block_size))
    if cfg.kind == "pretrain":
        from centelha.objectives.pretrain import Pretrain

        objective = Pretrain(body, tokenizer, Path(data), sampler, init_from,
                             run_cfg.train.eval_batches)
        apply_scope(body, body, cfg.scope, run_cfg.lora)
        return objective
    if cfg.kind == "classify":
        from centelha.objectives.classify import Classify as Kind
    elif cfg.kind == "sft":
        from centelha.objectives.sft import SFT as Kind
    else:
        from centelha.objectives.dpo import DPO as Kind
    return Kind(body, tokenizer, Path(data), cfg, run_cfg.lora, str(init_from), seed)


__all__ = ["KINDS", "Objective", "ObjectiveConfig", "make_objective"]
