"""A Hugging Face checkpoint folder as a whole: recognise it, load it, write one.

Only safetensors are read (sharded or not). `pytorch_model.bin` is a pickle and is
refused with a message saying how to convert it. Export writes what
`transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer` load: config,
weights, tokenizer and its config, and the generation config with the stop ids. Each
file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from centelha.atomic import atomic_write, atomic_write_text
from centelha.checkpoint import model_tensors, read_weights
from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.hf.config import config_to_hf, hf_to_config
from centelha.formats.hf.names import hf_to_tensors, tensors_to_hf
from centelha.formats.hf.tokenizer import load_hf_tokenizer
from centelha.jsonfile import read_json_object
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer


def is_hf_folder(path: Path) -> bool:
    """A Hugging Face folder's config.json names a `model_type`; centelha's names a `family`."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in read_json_object(config)
    except CentelhaError:
        return False  # not a readable config: the checkpoint reader says why


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's `model.safetensors`, or of the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json_object(index).get("weight_map", {}).values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise CentelhaError(f"{folder} holds only pickle weights (.bin/.pt), which centelha "
                            "does not load; save them as safetensors first "
                            "(model.save_pretrained(..., safe_serialization=True))")
    else:
        raise CentelhaError(f"{folder} has no model.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(read_weights(folder / name))
    return {k: v.float() for k, v in tensors.items()}


def load_hf(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, centelha-named fp32 weights and tokenizer of a Hugging Face folder."""
    folder = Path(folder)
    cfg = hf_to_config(read_json_object(folder / "config.json"))
    try:
        tensors = hf_to_tensors(read_safetensors(folder), cfg)
    except RuntimeError as e:  # q/k/v (or gate/up) of shapes that cannot be concatenated
        raise CentelhaError(f"{folder}: the weights' shapes do not fit together "
                            f"({e})") from None
    tokenizer = load_hf_tokenizer(folder)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CentelhaError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model "
                            f"only {cfg.vocab_size}")
    return cfg, tensors, tokenizer


def save_hf(model: Transformer, tokenizer: Tokenizer, out: str | Path) -> Path:
    """Write a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads."""
    out = Path(out)
    hf_config = config_to_hf(model.cfg, tokenizer)
    tensors = tensors_to_hf(model_tensors(model), model.cfg, hf_config["model_type"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(hf_config, indent=2) + "\n")
    atomic_write(out / "model.safetensors",
                 lambda tmp: save_file(tensors, str(tmp), {"format": "pt"}))
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "model_max_length": model.cfg.block_size, **tokenizer.config}
    if "eos_token" not in tok_config and tokenizer.eot_id is not None:
        tok_config["eos_token"] = tokenizer.id_to_token(tokenizer.eot_id)
    atomic_write_text(out / "tokenizer.json", tokenizer.to_str())
    atomic_write_text(out / "tokenizer_config.json",
                      json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    generation = tokenizer.generation_config()  # transformers' generate() stops at these
    atomic_write_text(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    return out
