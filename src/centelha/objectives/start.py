"""Where a run starts and what in it trains: `train.init_from`, the data's tokenizer, and
the objective's `scope`.

A run starts from random weights (pretraining from scratch: the model section of the
config and the prepared data's tokenizer) or from real ones (`init_from`: a registry
name, a checkpoint or Hugging Face folder, a GGUF file, or the folder of an earlier
fine-tune, loaded in float32 as `load_model` loads it, with its own tokenizer). Starting
from real weights the model section must be empty, since the weights fix the shape.

Scopes (see `ObjectiveConfig`): everything is frozen first, then the parts the scope
names are thawed, so a new parameter added later (a head) is the objective's to thaw.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.lora import DEFAULT_TARGETS, LoRAConfig
from centelha.lora.inject import apply_config
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer


def starting_model(model_section: dict, init_from: str | None, data_dir: Path | None
                   ) -> tuple[Transformer, Tokenizer]:
    """(the transformer the run starts from, in training mode; its tokenizer)."""
    if init_from:
        from centelha.loading import load_model

        if model_section:
            raise CentelhaError(f"train.init_from is {init_from!r}, so its weights fix the "
                                "model; leave the model section of the config empty "
                                f"(it sets {', '.join(sorted(map(str, model_section)))})")
        model, tokenizer, _ = load_model(init_from)
        return model.train(), tokenizer
    if data_dir is None or not (Path(data_dir) / "tokenizer.json").is_file():
        raise CentelhaError("a run that starts from random weights needs a prepared data "
                            "folder (with tokenizer.json); to fine-tune, set train.init_from "
                            "to a model")
    tokenizer = Tokenizer.load(Path(data_dir) / "tokenizer.json")
    cfg = ModelConfig.from_dict({"vocab_size": tokenizer.vocab_size, **model_section})
    if cfg.vocab_size < tokenizer.vocab_size:
        raise CentelhaError(f"model.vocab_size ({cfg.vocab_size}) is smaller than the "
                            f"tokenizer's ({tokenizer.vocab_size})")
    return Transformer(cfg).train(), tokenizer


def apply_scope(model: nn.Module, body: Transformer, scope: str, lora: dict | None,
                last_k: int = 2, head: nn.Module | None = None) -> LoRAConfig | None:
    """Freeze and thaw `model` for `scope`; returns the LoRA config applied, if any."""
    if scope == "full":
        model.requires_grad_(True)
        return None
    model.requires_grad_(False)
    if head is not None:
        head.requires_grad_(True)
    if scope == "last-k":
        if not 1 <= last_k <= len(body.blocks):
            raise CentelhaError(f"objective.last_k must be from 1 to the model's "
                                f"{len(body.blocks)} blocks, not {last_k}")
        for block in body.blocks[-last_k:]:
            block.requires_grad_(True)
        body.norm_f.requires_grad_(True)
    elif scope == "lora":
        return apply_config(body, lora_config(lora))
    return None


def lora_config(values: dict | None) -> LoRAConfig:
    """The `lora:` section as a `LoRAConfig` (r 8, alpha 2r by default)."""
    values = dict(values or {})
    values.setdefault("r", 8)
    values.setdefault("alpha", 2 * values["r"] if isinstance(values["r"], int) else 16)
    if "targets" in values and isinstance(values["targets"], str):
        values["targets"] = [t.strip() for t in values["targets"].split(",") if t.strip()]
    values.setdefault("targets", list(DEFAULT_TARGETS))
    unknown = sorted(set(values) - {"r", "alpha", "dropout", "targets", "rslora"})
    if unknown:
        raise CentelhaError(f"unknown config key 'lora.{unknown[0]}' "
                            "(known: alpha, dropout, r, rslora, targets)")
    return LoRAConfig.from_dict(values, "the lora section")


def trainable_count(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), each shared tensor counted once."""
    seen: dict[int, torch.nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total
