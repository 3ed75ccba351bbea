"""A centelha `Tokenizer` -> GGUF's `tokenizer.ggml.*` metadata.

A byte-level BPE tokenizer is written as llama.cpp's `gpt2` model (tokens, types,
merges, and the name of the pre-tokenizer whose splitting rule it uses); one imported
from SentencePiece goes back as a `llama` model, with scores that make llama.cpp merge in
the tokenizer's order. Rows of the embedding beyond the vocabulary become unused
`[PAD…]` tokens, so that token ids and rows keep matching. A character tokenizer has no
llama.cpp equivalent and is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gguf import GGUFWriter, TokenType
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from centelha.errors import CentelhaError
from centelha.formats.gguf.tokenizer import (
    STOP_IDS_KEY,
    STYLE_PRE_NAMES,
    byte_level_pre_tokenizer,
)
from centelha.tokenizer import Tokenizer


@dataclass
class ExportVocab:
    """The vocabulary as llama.cpp wants it, built (and checked) before the file is opened."""
    model: str  # "gpt2" or "llama"
    tokens: list[str]
    types: list[int]
    merges: list[str]  # gpt2
    scores: list[float]  # llama
    pre: str | None = None
    add_space_prefix: bool = False


def export_vocab(tokenizer: Tokenizer, vocab_size: int) -> ExportVocab:
    """One token per row of a `vocab_size`-row embedding, with llama.cpp's token types."""
    if tokenizer.kind == "char":
        raise CentelhaError("GGUF export needs a byte-level BPE tokenizer (or an imported "
                            "SentencePiece one); this model has a character tokenizer, which "
                            "llama.cpp cannot reproduce")
    spec = json.loads(tokenizer.hf.to_str())
    if spec["model"].get("type") != "BPE":
        raise CentelhaError("GGUF export needs a BPE tokenizer, not "
                            f"{spec['model'].get('type')!r}")
    ids = tokenizer.hf.get_vocab(with_added_tokens=True)
    if len(ids) > vocab_size:
        raise CentelhaError(f"the tokenizer has {len(ids)} tokens, the model only {vocab_size}")
    tokens: list[str | None] = [None] * vocab_size
    for token, i in ids.items():
        if i >= vocab_size:
            raise CentelhaError(f"token {token!r} has id {i}, beyond the model's {vocab_size} rows")
        tokens[i] = token
    added = tokenizer.hf.get_added_tokens_decoder()
    types = []
    for i, token in enumerate(tokens):
        if token is None:  # the model has more rows than the tokenizer has tokens
            tokens[i], kind = f"[PAD{i}]", TokenType.UNUSED
        elif i in added:
            kind = TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED
        elif tokenizer.kind == "spm" and token.startswith("<0x") and len(token) == 6:
            kind = TokenType.BYTE
        else:
            kind = TokenType.NORMAL
        types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    if tokenizer.kind == "spm":
        unk = spec["model"].get("unk_token")
        if unk in ids:
            types[ids[unk]] = int(TokenType.UNKNOWN)
        return ExportVocab("llama", tokens, types, [], _scores_from_merges(tokens, merges),
                            add_space_prefix=tokenizer.strip_leading_space)
    return ExportVocab("gpt2", tokens, types, merges, [], pre=_pre_name(spec))


def _write_stop_ids(writer: GGUFWriter, tokenizer: Tokenizer, eos: int | None) -> None:
    """Every stop id besides EOS: llama.cpp's end-of-turn and end-of-message keys hold
    two; all of them also go in STOP_IDS_KEY, which centelha reads back."""
    others = sorted(tokenizer.stop_ids - {eos})
    if tokenizer.eot_id in others:  # <|endoftext|> is the natural end of turn
        others.remove(tokenizer.eot_id)
        others.insert(0, tokenizer.eot_id)
    if others:
        writer.add_eot_token_id(others[0])
    if len(others) > 1:
        writer.add_eom_token_id(others[1])
    if len(others) > 2:
        writer.add_array(STOP_IDS_KEY, others)


def _pre_name(spec: dict) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer: the style whose pre-tokenizer
    serializes to the same JSON."""
    ours = json.dumps(spec.get("pre_tokenizer"), sort_keys=True)
    for style, name in STYLE_PRE_NAMES.items():
        probe = HFTokenizer(models.BPE())
        probe.pre_tokenizer = byte_level_pre_tokenizer(style)
        if json.dumps(json.loads(probe.to_str())["pre_tokenizer"], sort_keys=True) == ours:
            return name
    raise CentelhaError("this tokenizer's pre-tokenizer has no llama.cpp equivalent "
                        f"(supported: the {', '.join(STYLE_PRE_NAMES.values())} splitting rules)")


def _scores_from_merges(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece scores that make llama.cpp merge in the order of `merges`: a piece
    scores minus the rank of the first merge that makes it."""
    rank: dict[str, int] = {}
    for i, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), i)
    floor = -float(len(merges) + 1)
    return [-float(rank[t]) if t in rank else floor for t in tokens]


def write_tokenizer_metadata(writer: GGUFWriter, tokenizer: Tokenizer,
                             vocab: ExportVocab) -> None:
    """Every tokenizer key: the vocabulary, BOS/EOS and stop ids, the chat template."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.model == "gpt2":
        writer.add_token_merges(vocab.merges)
    else:
        writer.add_token_scores(vocab.scores)
        writer.add_add_space_prefix(vocab.add_space_prefix)
    # llama.cpp stops at EOS; a model trained here ends its documents with <|endoftext|>
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.eot_id
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else eos
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos)
    _write_stop_ids(writer, tokenizer, eos)
    writer.add_add_bos_token(tokenizer.add_bos)
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
