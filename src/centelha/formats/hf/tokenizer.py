"""A Hugging Face folder's tokenizer -> a centelha `Tokenizer`.

The vocabulary comes from `tokenizer.json` (or GPT-2's `vocab.json` + `merges.txt`), the
chat template and BOS/EOS from `tokenizer_config.json` (or `chat_template.jinja`), and
extra end-of-turn ids from `generation_config.json`.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from centelha.errors import CentelhaError
from centelha.tokenizer import Tokenizer, read_stop_ids, read_tokenizer_config


def load_hf_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer of a Hugging Face folder, with its chat template and stop ids."""
    config = read_tokenizer_config(folder / "tokenizer_config.json")
    template = folder / "chat_template.jinja"
    if "chat_template" not in config and template.is_file():
        config["chat_template"] = template.read_text(encoding="utf-8")
    if isinstance(config.get("chat_template"), list):  # named templates: take the default
        named = {t.get("name"): t.get("template") for t in config["chat_template"]}
        config["chat_template"] = named.get("default") or next(iter(named.values()), None)
    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
        tokenizer = Tokenizer(tokenizer.hf, config)
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tokenizer = Tokenizer(gpt2_tokenizer(folder / "vocab.json", folder / "merges.txt"), config)
    else:
        raise CentelhaError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json + "
                            "merges.txt)")
    tokenizer.stop_ids |= read_stop_ids(folder / "generation_config.json", tokenizer.vocab_size)
    return tokenizer


def gpt2_tokenizer(vocab: Path, merges: Path) -> HFTokenizer:
    """OpenAI's GPT-2 tokenizer from its vocab.json and merges.txt."""
    hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>"])
    return hf
