"""`TrainConfig` and `RunConfig`: what a training run does, read from YAML and flags.

A YAML file has two sections, `model:` (a `ModelConfig`; `vocab_size` may be left out
and is then taken from the prepared data's tokenizer) and `train:` (a `TrainConfig`).
Flags override single values with dotted keys (`--set train.lr=3e-4`). Every key is
checked: a typo is an error that names the known keys, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from centelha.errors import CentelhaError


@dataclass
class TrainConfig:
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float | None = None       # None: lr / 10
    warmup_steps: int = 100
    decay_steps: int | None = None    # None: max_steps (cosine reaches min_lr at the end)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0            # 0 turns clipping off
    eval_interval: int = 100
    eval_batches: int = 20
    ckpt_interval: int = 500          # 0: only at the end
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"              # auto | cpu | cuda | mps
    compile: bool = False
    threads: int | None = None        # None: PyTorch's default

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "max_steps", "eval_batches", "log_interval")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CentelhaError(f"train.{key} must be a positive integer, not {value!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise CentelhaError(f"train.lr must be a positive number, not {self.lr!r}")
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if self.decay_steps is None:
            self.decay_steps = self.max_steps


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "train": dataclasses.asdict(self.train)}


def _check_keys(section: str, values: dict, known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise CentelhaError(f"unknown config key '{section}.{unknown[0]}' "
                            f"(known: {', '.join(sorted(known))})")


def parse_value(text: str) -> Any:
    """A flag's value as YAML reads it: 3e-4 → float, true → bool, 12 → int."""
    return yaml.safe_load(text) if text.strip() else text


def bundled_config(name: str) -> Path | None:
    candidate = resources.files("centelha") / "configs" / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def read_yaml(path: str | Path) -> dict:
    file = Path(path)
    if not file.is_file():
        bundled = bundled_config(str(path))
        if bundled is None:
            raise CentelhaError(f"config file not found: {path}")
        file = bundled
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CentelhaError(f"{file} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise CentelhaError(f"{file} must be a mapping with 'model' and 'train' sections")
    return values


def load_run_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                    base: dict | None = None) -> RunConfig:
    """YAML (a path or a bundled name like `tiny`), then dotted overrides, all checked."""
    values = base if base is not None else (read_yaml(path) if path else {})
    values = {k: dict(v or {}) for k, v in values.items()} if values else {}
    _check_keys("config", values, {"model", "train"})
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in ("model", "train") or not key:
            raise CentelhaError(f"override {dotted!r} must look like train.KEY or model.KEY")
        values.setdefault(section, {})[key] = value
    train_values = values.get("train", {})
    _check_keys("train", train_values, {f.name for f in dataclasses.fields(TrainConfig)})
    from centelha.config import ModelConfig  # the model section is checked by its own class

    model_values = values.get("model", {})
    _check_keys("model", model_values, {f.name for f in dataclasses.fields(ModelConfig)})
    try:
        train_cfg = TrainConfig(**train_values)
    except TypeError as e:
        raise CentelhaError(f"bad train config: {e}") from None
    return RunConfig(model=model_values, train=train_cfg)
