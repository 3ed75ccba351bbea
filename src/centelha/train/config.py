"""`TrainConfig` and `RunConfig`: what a training run does, read from YAML and flags.

A YAML file has up to four sections: `model:` (a `ModelConfig`; `vocab_size` may be left
out and is then taken from the prepared data's tokenizer; empty when `train.init_from`
names a model), `train:` (a `TrainConfig`), `objective:` (an `ObjectiveConfig`: what is
learned, pretraining by default) and `lora:` (rank, alpha, dropout, targets, rslora, for
`objective.scope: lora`).
Flags override single values with dotted keys (`--set train.lr=3e-4`). Every key is
checked: a typo is an error that names the known keys, not a silently ignored setting,
and every value is checked for its kind and range (`TrainConfig` here, `ModelConfig` for
the model section), so a bad value is a one-line error before anything is written.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from centelha.errors import CentelhaError
from centelha.kinds import is_integer, is_number
from centelha.objectives.config import ObjectiveConfig
from centelha.objectives.start import lora_config
from centelha.precision import PRECISIONS

DEVICES = ("auto", "cpu", "cuda", "mps")
_CUDA_INDEX = re.compile(r"cuda:[0-9]+")
SECTIONS = ("model", "train", "objective", "lora")
SEED_LIMIT = 2**64 - 1  # torch seeds are unsigned 64-bit; the data sampler gets seed + 1


@dataclass
class TrainConfig:
    """How a training run optimises: the `train:` section of a YAML config. Each field's
    help is the text under it; every value is checked when the config is made."""

    batch_size: int = 16
    """Sequences per micro-step, per process (≥ 1)."""
    grad_accum: int = 1
    """Micro-steps whose gradients add up to one optimizer step (≥ 1)."""
    max_steps: int = 1000
    """Optimizer steps the run takes (≥ 1)."""
    lr: float = 1e-3
    """The peak learning rate, reached after warmup (> 0)."""
    min_lr: float | None = None
    """Where the cosine decay ends, from 0 to lr; null: lr / 10."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to lr (≥ 0)."""
    decay_steps: int | None = None
    """Step at which the cosine reaches min_lr (≥ 1); null: max_steps."""
    weight_decay: float = 0.1
    """AdamW's decoupled weight decay on matrices; biases and norm gains get none (≥ 0)."""
    beta1: float = 0.9
    """AdamW's first-moment decay, in [0, 1)."""
    beta2: float = 0.95
    """AdamW's second-moment decay, in [0, 1)."""
    grad_clip: float = 1.0
    """Clip the gradients' global norm to this (≥ 0; 0 turns clipping off)."""
    eval_interval: int = 100
    """Steps between validation losses (≥ 1, as in nanoGPT); the last step is always
    evaluated, so max_steps means "only at the end"."""
    eval_batches: int = 20
    """Validation batches per evaluation (≥ 1)."""
    ckpt_interval: int = 500
    """Steps between checkpoints (≥ 0; 0: only at the end)."""
    log_interval: int = 10
    """Steps between log lines (≥ 1)."""
    seed: int = 1337
    """Seed of the initial weights and of the batch order, from 0 to 2**64 - 2."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps (auto: the GPU if there is one)."""
    compile: bool = False
    """torch.compile the model before training."""
    precision: str = "auto"
    """auto, fp32 or bf16 (autocast): auto takes bf16 on a GPU or a CPU with native bf16."""
    threads: int | None = None
    """CPU threads for PyTorch (≥ 1); null: PyTorch's default."""
    init_from: str | None = None
    """Start from this model's weights and tokenizer (a registry name, a checkpoint or
    Hugging Face folder, a GGUF file, an earlier fine-tune); null: random weights."""

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_optimizer()
        _require("device", self.device, _is_device(self.device),
                 f"one of {', '.join(DEVICES)} (or cuda:N)")
        _require("compile", self.compile, isinstance(self.compile, bool), "true or false")
        _require("precision", self.precision, self.precision in PRECISIONS,
                 f"one of {', '.join(PRECISIONS)}")
        _require("init_from", self.init_from, self.init_from is None
                 or (isinstance(self.init_from, str) and self.init_from),
                 "a model name or path, or null")
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if self.decay_steps is None:
            self.decay_steps = self.max_steps

    def _check_counts(self) -> None:
        for key in ("batch_size", "grad_accum", "max_steps", "eval_batches", "log_interval"):
            value = getattr(self, key)
            _require(key, value, is_integer(value) and value >= 1, "a positive integer")
        _require("eval_interval", self.eval_interval,
                 is_integer(self.eval_interval) and self.eval_interval >= 1,
                 "a positive integer (set it to max_steps to evaluate only at the end)")
        for key in ("warmup_steps", "ckpt_interval"):
            value = getattr(self, key)
            _require(key, value, is_integer(value) and value >= 0, "a non-negative integer")
        decay = self.decay_steps
        _require("decay_steps", decay, decay is None or (is_integer(decay) and decay >= 1),
                 "a positive integer or null (max_steps)")
        _require("threads", self.threads,
                 self.threads is None or (is_integer(self.threads) and self.threads >= 1),
                 "a positive integer or null (PyTorch's default)")
        _require("seed", self.seed, is_integer(self.seed) and 0 <= self.seed < SEED_LIMIT,
                 "an integer from 0 to 2**64 - 2")

    def _check_optimizer(self) -> None:
        _require("lr", self.lr, is_number(self.lr) and self.lr > 0, "a positive number")
        _require("min_lr", self.min_lr, self.min_lr is None
                 or (is_number(self.min_lr) and 0 <= self.min_lr <= self.lr),
                 f"a number from 0 to train.lr ({self.lr}) or null (lr / 10)")
        for key in ("weight_decay", "grad_clip"):
            value = getattr(self, key)
            _require(key, value, is_number(value) and value >= 0, "a number ≥ 0")
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            _require(key, value, is_number(value) and 0 <= value < 1, "a number in [0, 1)")


def _is_device(value: Any) -> bool:
    return isinstance(value, str) and (value in DEVICES or bool(_CUDA_INDEX.fullmatch(value)))


def _require(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise CentelhaError(f"train.{key} must be {expected}, not {_shown(value)}")


def _shown(value: Any) -> str:
    """A value as the user wrote it, kept to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    lora: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {"model": dict(self.model), "train": dataclasses.asdict(self.train),
                  "objective": self.objective.to_dict()}
        if self.lora is not None:
            values["lora"] = dict(self.lora)
        return values


def _check_keys(section: str, values: dict, known: set[str]) -> None:
    unknown = sorted(set(values) - known, key=str)  # YAML keys need not be strings
    if unknown:
        raise CentelhaError(f"unknown config key '{section}.{unknown[0]}' "
                            f"(known: {', '.join(sorted(known))})")


class _Loader(yaml.SafeLoader):
    """YAML as configs mean it: PyYAML follows YAML 1.1, where a float needs a dot, so
    `lr: 3e-4` or `--set train.lr=3e-4` would be the string '3e-4'; this loader reads
    such exponent forms as floats, as YAML 1.2 and JSON do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def parse_value(text: str) -> Any:
    """A flag's value as YAML reads it: 3e-4 → float, true → bool, 12 → int."""
    return yaml.load(text, Loader=_Loader) if text.strip() else text  # a SafeLoader


def parse_sets(values: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` flags as dotted overrides, each value read as YAML."""
    overrides = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise CentelhaError(f"--set needs KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    return overrides


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
        values = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise CentelhaError(f"{file} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise CentelhaError(f"{file} must be a mapping with 'model' and 'train' sections")
    return values


def load_run_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                    base: dict | None = None) -> RunConfig:
    """YAML (a path or a bundled name like `tiny`), then dotted overrides, all checked:
    the train section by `TrainConfig`, the model section by building a `ModelConfig`
    from it now (the tokenizer's vocab_size is filled in later), so a bad value is
    refused before a run folder is made."""
    values = base if base is not None else (read_yaml(path) if path else {})
    values = _sections(values or {})
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise CentelhaError(f"override {dotted!r} must look like train.KEY, model.KEY, "
                                "objective.KEY or lora.KEY")
        values.setdefault(section, {})[key] = value
    train_values = values.get("train", {})
    _check_keys("train", train_values, {f.name for f in dataclasses.fields(TrainConfig)})
    model_values = values.get("model", {})
    check_model_section(model_values)
    objective_values = values.get("objective", {})
    _check_keys("objective", objective_values,
                {f.name for f in dataclasses.fields(ObjectiveConfig)})
    lora = values.get("lora")
    if lora is not None:
        lora_config(lora)  # checked now, applied when the run starts
    return RunConfig(model=model_values, train=TrainConfig(**train_values),
                     objective=ObjectiveConfig(**objective_values), lora=lora)


def _sections(values: Any) -> dict[str, dict]:
    """The config's sections, copied; each must be a mapping (or empty)."""
    if not isinstance(values, dict):
        raise CentelhaError(f"a config must be a mapping with 'model' and 'train' sections, "
                            f"not {_shown(values)}")
    _check_keys("config", values, set(SECTIONS))
    for name, section in values.items():
        if section is not None and not isinstance(section, dict):
            raise CentelhaError(f"config section '{name}' must be a mapping of keys to values, "
                                f"not {_shown(section)}")
    return {name: dict(section or {}) for name, section in values.items()}


def check_model_section(values: dict[str, Any]) -> None:
    """Build a `ModelConfig` from the model section, which checks its keys and values.
    A value of the wrong kind that `ModelConfig` does not check itself may surface as
    a Python error from its arithmetic; it is still the user's input, so it becomes a
    one-line error naming the section."""
    from centelha.config import ModelConfig

    _check_keys("model", values, {f.name for f in dataclasses.fields(ModelConfig)})
    try:
        ModelConfig.from_dict(values)
    except (TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        raise CentelhaError(f"bad model config: {e}") from None
