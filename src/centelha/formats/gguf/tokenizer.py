"""A GGUF file's tokenizer (`tokenizer.ggml.*`) -> a centelha `Tokenizer`.

The tokenizer is rebuilt as a Hugging Face `tokenizers` object: byte-level BPE (`gpt2`
model) from tokens + merges, with the pre-tokenizer regex the original tokenizer of that
family used (named by `tokenizer.ggml.pre`); SentencePiece (`llama` model) as a
byte-fallback BPE whose merges come from the token scores, as Hugging Face converts
SentencePiece models. Control and user-defined tokens become special tokens; the chat
template and BOS/EOS go to the tokenizer's config; end-of-turn ids become stop ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import TokenType
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from centelha.errors import CentelhaError
from centelha.formats.gguf.config import meta
from centelha.formats.gguf.container import GGUFFile
from centelha.tokenizer import Tokenizer

MAX_MERGE_TOKEN = 128  # SentencePiece pieces longer than this take part in no merge
# stop ids beyond llama.cpp's eos/eot/eom keys, in a key of our own that llama.cpp ignores
STOP_IDS_KEY = "centelha.stop_token_ids"

# The split regexes of the Hugging Face tokenizers behind llama.cpp's `tokenizer.ggml.pre`
# names. "gpt2": GPT-2's regex (inside ByteLevel); "digits": the same after splitting
# every digit apart (SmolLM, StarCoder); "llama3": Llama 3's (numbers in groups of three);
# "qwen2": Qwen2's (every digit apart).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_STYLES = {
    "gpt-2": "gpt2", "default": "gpt2", "phi-2": "gpt2", "mpt": "gpt2", "olmo": "gpt2",
    "smollm": "digits", "starcoder": "digits", "refact": "digits", "codeshell": "digits",
    "llama-bpe": "llama3", "llama3": "llama3", "llama-v3": "llama3", "falcon3": "llama3",
    "dbrx": "llama3", "smaug-bpe": "llama3",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2", "stablelm2": "qwen2", "megrez": "qwen2",
}
# what export writes for each style
STYLE_PRE_NAMES = {"gpt2": "gpt-2", "digits": "smollm", "llama3": "llama-bpe", "qwen2": "qwen2"}
# llama.cpp (and Llama 3's tokenizer.json) take a whole pre-token that is in the vocabulary
# as one token, without applying merges
IGNORE_MERGES_PRE = ("llama-bpe", "llama3", "llama-v3", "falcon3")


def byte_level_pre_tokenizer(style: str) -> pre_tokenizers.PreTokenizer:
    if style == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if style == "digits":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    regex = LLAMA3_REGEX if style == "llama3" else QWEN2_REGEX
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def read_tokenizer(gguf: GGUFFile) -> Tokenizer:
    kind = meta(gguf, "tokenizer.ggml.model", str)
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], str):
        raise CentelhaError(f"{gguf.path} lacks the metadata key tokenizer.ggml.tokens "
                            "(the vocabulary)")
    types = gguf.metadata.get("tokenizer.ggml.token_type")
    if not isinstance(types, np.ndarray) or len(types) != len(tokens):
        types = np.full(len(tokens), int(TokenType.NORMAL))
    if kind == "gpt2":
        pre = meta(gguf, "tokenizer.ggml.pre", str, "default")
        hf = _bpe_tokenizer(gguf, tokens, types, pre)
        add_bos_default = pre in IGNORE_MERGES_PRE  # llama.cpp: Llama 3 prompts start with BOS
    elif kind == "llama":
        hf = _sentencepiece_tokenizer(gguf, tokens, types)
        add_bos_default = True
    else:
        raise CentelhaError(f"{gguf.path}: tokenizer.ggml.model {kind!r} is not supported "
                            "(supported: gpt2 (byte-level BPE), llama (SentencePiece))")
    config: dict[str, Any] = {
        "add_bos_token": meta(gguf, "tokenizer.ggml.add_bos_token", bool, add_bos_default)}
    for name in ("bos", "eos"):
        token_id = meta(gguf, f"tokenizer.ggml.{name}_token_id", int, -1)
        if 0 <= token_id < len(tokens):
            config[f"{name}_token"] = tokens[token_id]
    template = gguf.metadata.get("tokenizer.chat_template")
    if isinstance(template, str) and template:
        config["chat_template"] = template
    tokenizer = Tokenizer(hf, config)
    if kind == "llama":  # decoding drops the space SentencePiece put in front, if it did
        tokenizer.strip_leading_space = meta(gguf, "tokenizer.ggml.add_space_prefix", bool, True)
    for name in ("eot", "eom"):  # end of turn / of message: generation stops there too
        token_id = meta(gguf, f"tokenizer.ggml.{name}_token_id", int, -1)
        if 0 <= token_id < len(tokens):
            tokenizer.stop_ids.add(token_id)
    extra = gguf.metadata.get(STOP_IDS_KEY)  # more stop ids than llama.cpp has keys for
    if isinstance(extra, np.ndarray) and extra.dtype.kind in "iu":
        tokenizer.stop_ids |= {int(i) for i in extra if 0 <= int(i) < len(tokens)}
    return tokenizer


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)  # a repeated token keeps its first id
    return vocab


def _special_tokens(tokens: list[str], types: np.ndarray, kinds: tuple[int, ...]):
    return [AddedToken(tokens[i], special=True, normalized=False)
            for i in np.flatnonzero(np.isin(types, [int(k) for k in kinds]))]


def _bpe_tokenizer(gguf: GGUFFile, tokens: list[str], types: np.ndarray,
                   pre: str) -> HFTokenizer:
    style = PRE_TOKENIZER_STYLES.get(pre)
    if style is None:
        raise CentelhaError(f"{gguf.path}: pre-tokenizer {pre!r} is not supported (supported: "
                            f"{', '.join(PRE_TOKENIZER_STYLES)})")
    raw_merges = gguf.metadata.get("tokenizer.ggml.merges")
    if not isinstance(raw_merges, list):
        raise CentelhaError(f"{gguf.path} lacks the metadata key tokenizer.ggml.merges")
    if raw_merges and not isinstance(raw_merges[0], str):  # items of an array share a type
        raise CentelhaError(f"{gguf.path}: tokenizer.ggml.merges holds "
                            f"{type(raw_merges[0]).__name__} items, not strings")
    merges = []
    for merge in raw_merges:
        left, space, right = merge.partition(" ")
        if not space or not left or not right:
            raise CentelhaError(f"{gguf.path}: bad merge {merge!r} in tokenizer.ggml.merges")
        merges.append((left, right))
    try:
        hf = HFTokenizer(models.BPE(vocab=_vocab(tokens), merges=merges,
                                    ignore_merges=pre in IGNORE_MERGES_PRE))
    except Exception as e:  # the Rust side raises plain Exception
        raise CentelhaError(f"{gguf.path}: the vocabulary and merges do not agree ({e})") from None
    hf.pre_tokenizer = byte_level_pre_tokenizer(style)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(_special_tokens(tokens, types, (TokenType.CONTROL,
                                                          TokenType.USER_DEFINED)))
    return hf


def _sentencepiece_tokenizer(gguf: GGUFFile, tokens: list[str],
                             types: np.ndarray) -> HFTokenizer:
    scores = gguf.metadata.get("tokenizer.ggml.scores")
    if not isinstance(scores, np.ndarray) or len(scores) != len(tokens):
        raise CentelhaError(f"{gguf.path} lacks the metadata key tokenizer.ggml.scores "
                            "(needed by a SentencePiece tokenizer)")
    vocab = _vocab(tokens)
    unk_id = meta(gguf, "tokenizer.ggml.unknown_token_id", int, -1)
    unk = tokens[unk_id] if 0 <= unk_id < len(tokens) else None
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=_merges_from_scores(tokens, types, scores),
                                unk_token=unk, fuse_unk=True, byte_fallback=True))
    # SentencePiece writes a space as "▁" and (usually) starts the text with one. The
    # Metaspace decoder is what `Tokenizer` recognises as SentencePiece-style.
    prefix = meta(gguf, "tokenizer.ggml.add_space_prefix", bool, True)
    hf.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("\u2581")] if prefix else []) + [normalizers.Replace(" ", "\u2581")])
    hf.decoder = decoders.Sequence([
        decoders.ByteFallback(), decoders.Fuse(),
        decoders.Metaspace("\u2581", prepend_scheme="first" if prefix else "never", split=False)])
    hf.add_special_tokens(_special_tokens(tokens, types, (TokenType.CONTROL, TokenType.UNKNOWN,
                                                          TokenType.USER_DEFINED)))
    return hf


def _merges_from_scores(tokens: list[str], types: np.ndarray,
                        scores: np.ndarray) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces is a merge, ranked by the merged piece's
    score (higher first): SentencePiece's BPE joins the best-scoring pair first."""
    kinds = (int(TokenType.NORMAL), int(TokenType.USER_DEFINED))
    mergeable = {t: i for i, t in enumerate(tokens) if int(types[i]) in kinds}
    ranked = []
    for token, i in mergeable.items():
        if len(token) > MAX_MERGE_TOKEN:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-float(scores[i]), mergeable[left], mergeable[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]
