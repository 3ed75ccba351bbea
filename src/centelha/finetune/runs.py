"""What `centelha finetune KIND MODEL --data … --out …` does: a fine-tune run's config
from defaults, a YAML file and flags, then the one training loop.

Defaults are those of a short LoRA run on a CPU (the issue's acceptance runs take
minutes, not hours): a few hundred steps, a warmup of a tenth, no weight decay on
adapters, a checkpoint every 50 steps; DPO a lower learning rate. A YAML config (the
same sections as `train`'s) and `--set objective.KEY=VALUE` override them;
`model`/`data` name the base and the data.
Continued pretraining (`kind="pretrain"`) takes text files or folders and tokenizes them
with the model's own tokenizer into `OUT/data` first (a prepared folder is used as is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from centelha.errors import CentelhaError
from centelha.train.config import RunConfig, load_run_config, read_yaml
from centelha.train.loop import TrainResult, train

DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {"max_steps": 300, "batch_size": 8, "lr": 1e-3, "warmup_steps": 30,
              "weight_decay": 0.0, "eval_interval": 50, "ckpt_interval": 50,
              "log_interval": 5},
}
# DPO moves a model that already answers well: at 5e-4 it made SmolLM2's greedy answers
# worse on our set (docs/LOG.md), at 2e-4 with the NLL term it improved them
KIND_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "dpo": {"train": {"lr": 2e-4, "batch_size": 4}},
}


def finetune_config(kind: str, model: str, config: str | Path | None = None,
                    overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML `config`, then `overrides` (dotted keys), all checked."""
    values = {section: dict(keys) for section, keys in DEFAULTS.items()}
    for section, keys in KIND_DEFAULTS.get(kind, {}).items():
        values.setdefault(section, {}).update(keys)
    for section, keys in (read_yaml(config) if config else {}).items():
        if isinstance(keys, dict):
            values.setdefault(section, {}).update(keys)
        else:
            values[section] = keys  # refused with the usual message below
    values.setdefault("objective", {})["kind"] = kind
    values.setdefault("train", {})["init_from"] = str(model)
    return load_run_config(base=values, overrides=overrides)


def finetune(kind: str, model: str, data: str | Path, out: str | Path,
             config: str | Path | None = None, overrides: dict[str, Any] | None = None,
             stop_after: int | None = None, show_progress: bool = True,
             strategy: str = "ddp") -> TrainResult:
    """Fine-tune `model` for `kind` (pretrain, classify, sft, dpo) on `data` into `out`."""
    run_cfg = finetune_config(kind, model, config, overrides)
    data = Path(data)
    if not data.exists():
        raise CentelhaError(f"data not found: {data}")
    if kind == "pretrain" and not (data / "meta.json").is_file():
        data = _tokenized_with_model(data, Path(out) / "data", model, show_progress)
    return train(data, out, run_cfg, stop_after=stop_after, show_progress=show_progress,
                 strategy=strategy)


def resume_finetune(out: str | Path, stop_after: int | None = None,
                    show_progress: bool = True, strategy: str = "ddp") -> TrainResult:
    return train(None, out, resume=True, stop_after=stop_after, show_progress=show_progress,
                 strategy=strategy)


def _tokenized_with_model(corpus: Path, folder: Path, model: str,
                          show_progress: bool) -> Path:
    from centelha.data import prepare
    from centelha.loading import load_model

    if (folder / "meta.json").is_file():
        return folder  # tokenized by an earlier start of this run
    _, tokenizer, _ = load_model(model)
    return prepare([corpus], folder, tokenizer=tokenizer, show_progress=show_progress).path
