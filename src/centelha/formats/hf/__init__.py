"""Hugging Face checkpoint folders: import (GPT-2, Llama 2/3, Mistral, Qwen2, Qwen3,
SmolLM2) and export (GPT-2 or Llama/Qwen layout) of `config.json` + safetensors.

One idea per module:
- `config.py`: `config.json` ⇄ `ModelConfig` (a family is a preset, so this only
  translates field names; a sliding window caps the context, which keeps it exact).
- `names.py`: the name table of each layout (ours ↔ theirs + transform: GPT-2's
  transposed `Conv1D` weights, Llama's separate q/k/v and gate/up), read one way on
  import and the other way on export, so the two cannot drift.
- `tokenizer.py`: `tokenizer.json` (or GPT-2's vocab + merges), chat template, stop ids.
- `folder.py`: the folder as a whole — `is_hf_folder`, `load_hf`, `save_hf`.
"""

from centelha.formats.hf.config import LLAMA_LIKE, SUPPORTED, config_to_hf, hf_to_config
from centelha.formats.hf.folder import is_hf_folder, load_hf, read_safetensors, save_hf
from centelha.formats.hf.names import hf_to_tensors, tensors_to_hf
from centelha.formats.hf.tokenizer import gpt2_tokenizer, load_hf_tokenizer

__all__ = ["LLAMA_LIKE", "SUPPORTED", "config_to_hf", "gpt2_tokenizer", "hf_to_config",
           "hf_to_tensors", "is_hf_folder", "load_hf", "load_hf_tokenizer", "read_safetensors",
           "save_hf", "tensors_to_hf"]
