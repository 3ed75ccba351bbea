"""Helpers shared by the GGUF tests: a tokenizer, tiny models with visible biases and
norms, and `rewrite`, which copies a GGUF file through the gguf library with changes."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGUFValueType as V

from centelha.config import ModelConfig
from centelha.formats.gguf import load_gguf
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer, train_bpe

TEXT = "Olá, coração! A ação e a emoção não são iguais 🎉🙂 — 2024, 1234567 çãé."
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def chat_tokenizer() -> Tokenizer:
    """A byte-level BPE with special tokens, a chat template, BOS and EOS."""
    corpus = ["Era uma vez um rato que roía a roupa do rei de Roma. " * 20,
              "A ação, a emoção e o coração: não há razão! 2024 12345 12345 🎉🙂 " * 20]
    trained = train_bpe(corpus, vocab_size=400, special_tokens=SPECIALS)
    return Tokenizer(trained.hf, {"chat_template": CHAT_TEMPLATE, "bos_token": "<|im_start|>",
                                  "eos_token": "<|im_end|>", "add_bos_token": False})


def make_model(vocab_size: int, family: str = "llama", seed: int = 0, **overrides) -> Transformer:
    values = dict(family=family, vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4,
                  d_model=64, init_std=0.2)
    if family == "llama":
        values.update(n_kv_head=2, d_ff=128)
    values.update(overrides)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_dict(values)).eval()
    with torch.no_grad():  # norms are ones and biases zeros at init: make a mix-up show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def logits(model: Transformer, vocab_size: int) -> torch.Tensor:
    ids = torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids)


def reload(path: Path) -> tuple[ModelConfig, Transformer, Tokenizer]:
    cfg, tensors, tok = load_gguf(path)
    return cfg, Transformer.from_tensors(cfg, tensors), tok


def rewrite(src: Path, dst: Path, tensor=None, kv: dict | None = None,
            drop: tuple[str, ...] = (), arch: str | None = None) -> None:
    """Copy a GGUF file through the gguf library, changing tensors or metadata on the way.
    `tensor(name, float32 array)` returns (array, raw ggml type or None)."""
    kv = kv or {}
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch or reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in kv \
                or name.startswith(drop):
            continue
        sub = field.types[-1] if field.types[0] == V.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    for name, (value, vtype, sub) in kv.items():
        writer.add_key_value(name, value, vtype, sub)
    for t in reader.tensors:
        array, raw = np.array(t.data), None
        if tensor is not None:
            array, raw = tensor(t.name, array)
        writer.add_tensor(t.name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
