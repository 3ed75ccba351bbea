"""Checkpoint directories: save and load them, never leaving a half-written one.

A checkpoint directory holds `config.json`, `model.safetensors` and `tokenizer.json`:
everything needed to run the model. A training run directory is a checkpoint directory
with the training state beside it, in `state/step_NNNNNNN/` (weights, optimizer moments,
step, RNG states, data position, as safetensors + JSON: no pickle anywhere).

Crash safety, the design a reader should know: a training state is written whole into
`state/.tmp-…` and only then renamed to `state/step_NNNNNNN` — a rename is atomic, so
a state directory either exists complete or not at all. Re-saving a step that already
has a state first renames the old one aside to `state/.old-step_NNNNNNN`, then renames
the new one in, then deletes the aside copy: at every instant one complete state of
the step exists (if a crash leaves only the aside copy, it stands for its step and
resume moves it back). Resume reads only from the newest complete state, newest by the
step number, not by name. The top-level model files are then replaced one by one, each by
write-then-rename (the weights by a hard link to the state's copy, so no second write),
so a reader always finds a whole file. Older states are deleted only after the new one
is in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from centelha.atomic import (
    atomic_write,
    atomic_write_text,
    fsync_dir,
    fsync_file,
    link_into_place,
)
from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.model import Transformer, matmul_parameters
from centelha.tokenizer import Tokenizer

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
STATE_DIR = "state"
SHARDED = "sharded"  # torch.distributed.checkpoint shards inside a state (FSDP runs)


# -- model weights ------------------------------------------------------------------------
def model_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """State dict for safetensors: contiguous, and a tied LM head stored once."""
    return tensors_for_file(model.state_dict(), model.cfg)


def tensors_for_file(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    state = dict(state)
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in state.items()}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CentelhaError(f"{path} is not a readable safetensors file ({e})") from None


def save_model_files(path: str | Path, model: Transformer, tokenizer: Tokenizer) -> None:
    """Write a checkpoint directory (each file atomically). A model with quantized layers
    is saved as such: its blocks in model.safetensors, their layout in config.json
    (`extra.quantization`)."""
    from centelha.quant import is_quantized, quantized_state

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.cfg.to_dict()
    if is_quantized(model):
        tensors, description = quantized_state(model)
        config["extra"] = {**config["extra"], "quantization": description}
    else:
        tensors = model_tensors(model)
    atomic_write_text(path / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write(path / "model.safetensors",
                 lambda tmp: save_file(tensors, str(tmp), {"format": "pt"}))
    write_tokenizer(path, tokenizer)


def write_tokenizer(path: Path, tokenizer: Tokenizer) -> None:
    for name, text in tokenizer.files().items():
        atomic_write_text(path / name, text)


def check_checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CentelhaError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CentelhaError(f"{path} is not a checkpoint directory")
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise CentelhaError(f"{path} is not a complete checkpoint: missing {', '.join(missing)}")
    return path


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[Transformer, Tokenizer]:
    """Model (in eval mode) and tokenizer from a checkpoint directory."""
    path = check_checkpoint_dir(path)
    cfg = ModelConfig.load(path / "config.json")
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    weights = path / "model.safetensors"
    tensors = read_weights(weights)
    # A config.json that describes a far bigger model than the file holds (a corrupt one)
    # is refused before any model is built: building it would take the memory, or for an
    # absurd layer count the time, of the model it describes. Even int4 blocks store one
    # value per two weights, so a factor of 4 never refuses a real checkpoint.
    stored = sum(t.numel() for t in tensors.values())
    if matmul_parameters(cfg) > 4 * stored:
        raise CentelhaError(f"{weights}: config.json describes {matmul_parameters(cfg)} "
                            f"weights, the file holds only {stored} values")
    try:
        if cfg.extra.get("quantization"):
            from centelha.quant import apply_quantized_state

            model = Transformer(cfg)
            own = model.state_dict()  # the float tensors kept as they are must fit it
            for name, tensor in sorted(tensors.items()):
                if name in own and tensor.shape != own[name].shape:
                    raise CentelhaError(f"weight {name} has shape {tuple(tensor.shape)}, the "
                                        f"config implies {tuple(own[name].shape)}")
            apply_quantized_state(model, tensors, cfg.extra["quantization"])
        else:
            not_float = sorted(k for k, t in tensors.items() if not t.is_floating_point())
            if not_float:
                raise CentelhaError(f"{not_float[0]} holds {tensors[not_float[0]].dtype} "
                                    "values, not floats")
            model = Transformer.from_tensors(cfg, tensors)
    except CentelhaError as e:
        raise CentelhaError(f"{weights}: {e}") from None
    return model.to(device).eval(), tokenizer


# -- training state -----------------------------------------------------------------------
def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().contiguous()
            else:
                plain["state"].setdefault(str(pid), {})[key] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, values in plain["state"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": plain["param_groups"]}


STEP_NAME = re.compile(r"step_([0-9]+)")
ASIDE = ".old-"  # prefix of a state renamed aside while its step is saved again


def state_step(path: Path) -> int | None:
    """The step of a state folder name (`step_0000042` → 42), None for any other name."""
    match = STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def state_dirs(run_dir: Path) -> list[Path]:
    """The run's complete states, oldest to newest by step (step_9999999 before
    step_10000000, which a sort by name would get wrong). A state renamed aside by a save
    that crashed before the new copy was in place stands for its step."""
    root = Path(run_dir) / STATE_DIR
    if not root.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for path in root.iterdir():
        aside = path.name.startswith(ASIDE)
        step = state_step(path.with_name(path.name.removeprefix(ASIDE)))
        if step is None or not path.is_dir() or (aside and step in by_step):
            continue
        by_step[step] = path  # the real folder wins over an aside copy of the same step
    return [by_step[step] for step in sorted(by_step)]


def latest_state(run_dir: str | Path) -> Path | None:
    dirs = state_dirs(Path(run_dir))
    return dirs[-1] if dirs else None


def save_training_state(run_dir: str | Path, step: int, model: Transformer,
                        optimizer: torch.optim.Optimizer | dict | None, tokenizer: Tokenizer,
                        tensors: dict[str, torch.Tensor], info: dict, keep: int = 1,
                        weights: dict[str, torch.Tensor] | None = None,
                        sharded: Path | None = None,
                        publish: Callable[[Path, Path], None] | None = None) -> Path:
    """Write state/step_NNNNNNN atomically, publish the model files, drop older states.

    `weights` replaces the model's own tensors (a sharded model's, gathered), `optimizer`
    may be an optimizer, its state dict, or None when `sharded` holds it: a folder written
    by torch.distributed.checkpoint, moved into the state as `sharded/` before the rename
    that makes the state exist. `publish(run_dir, state weights file)` writes what users
    load (default: the model's checkpoint files; a fine-tune writes its adapter)."""
    run_dir = Path(run_dir)
    root = run_dir / STATE_DIR
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.state_dict()
    opt_tensors, opt_plain = _flatten_optimizer(optimizer) if optimizer else ({}, None)
    weights = model_tensors(model) if weights is None else tensors_for_file(weights, model.cfg)
    save_file(weights, str(tmp / "model.safetensors"))
    save_file({**opt_tensors, **tensors}, str(tmp / "train_state.safetensors"))
    (tmp / "train_state.json").write_text(
        json.dumps({"step": step, "optimizer": opt_plain, **info}, indent=2) + "\n")
    for file in tmp.iterdir():
        fsync_file(file)
    if sharded is not None:
        os.replace(sharded, tmp / SHARDED)
        for file in (tmp / SHARDED).iterdir():
            fsync_file(file)
    fsync_dir(tmp)
    final = root / f"step_{step:07d}"
    _move_into_place(tmp, final)
    if publish is None:
        publish_model(run_dir, final / "model.safetensors", model, tokenizer)
    else:
        publish(run_dir, final / "model.safetensors")
    for old in state_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _aside(state: Path) -> Path:
    return state.with_name(ASIDE + state.name)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete state `tmp` to `final`. An existing `final` is renamed aside
    first and deleted only afterwards (deleting it first would leave no state of the step
    if the process died before the second rename)."""
    aside = _aside(final)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)  # left by an earlier crash; `final` is whole
        os.replace(final, aside)
        fsync_dir(final.parent)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def publish_model(run_dir: Path, weights: Path, model: Transformer, tokenizer: Tokenizer) -> None:
    """Put the checkpoint files at the top of the run dir, each replaced atomically."""
    atomic_write_text(run_dir / "config.json", json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    write_tokenizer(run_dir, tokenizer)
    link_into_place(run_dir / "model.safetensors", weights)


def load_training_state(state_dir: Path) -> tuple[dict[str, torch.Tensor], dict | None, dict]:
    """(model tensors, optimizer state dict, info with step and saved tensors) of a state.
    A state written by a sharded run has no optimizer here: `info["sharded"]` is the folder
    of its torch.distributed.checkpoint shards (model and optimizer)."""
    try:
        weights = load_file(str(state_dir / "model.safetensors"))
        tensors = load_file(str(state_dir / "train_state.safetensors"))
        info = json.loads((state_dir / "train_state.json").read_text())
    except (SafetensorError, OSError, ValueError) as e:
        raise CentelhaError(f"training state {state_dir} is unreadable ({e})") from None
    plain = info.pop("optimizer")
    optimizer = _unflatten_optimizer(tensors, plain) if plain is not None else None
    info["tensors"] = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    info["sharded"] = state_dir / SHARDED if (state_dir / SHARDED).is_dir() else None
    return weights, optimizer, info


def clean_partial_states(run_dir: str | Path) -> None:
    """Remove what a crash left behind: half-written state directories (never renamed)
    and temporary model files. A state renamed aside is moved back if the save that
    replaced it died before its new copy was in place, and deleted otherwise."""
    root = Path(run_dir) / STATE_DIR
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in root.glob(ASIDE + "*"):
            _restore_aside(p)
    for p in Path(run_dir).glob(".*.safetensors.*"):
        p.unlink(missing_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        for p in Path(run_dir).glob(f".{name}.*"):
            p.unlink(missing_ok=True)


def _restore_aside(aside: Path) -> None:
    final = aside.with_name(aside.name.removeprefix(ASIDE))
    if state_step(final) is not None and aside.is_dir() and not final.exists():
        os.replace(aside, final)
        fsync_dir(aside.parent)
    else:
        shutil.rmtree(aside, ignore_errors=True)
