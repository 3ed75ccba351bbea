"""`Tokenizer`: byte-level BPE (or characters with byte fallback) over HF `tokenizers`.

Two kinds, both saved as one `tokenizer.json` that HF `tokenizers` reads:
- "bpe": GPT-2-style byte-level BPE. Text becomes UTF-8 bytes first, so every string
  round-trips, whatever its script.
- "char": one token per character seen in training; any other character is spelt as its
  UTF-8 bytes (`<0xE2>` …), as Llama's SentencePiece tokenizers do. Also exact.

Design choices a reader should know:
- Decoding goes through a table of each token's bytes, not through the library's
  decoder: joining bytes is exact, and a stream of tokens can be turned into text
  incrementally even when a character (an emoji, say) is split over several tokens.
- No normalizer runs inside the tokenizer; text is normalized (NFC) once when a corpus
  is prepared, so `decode(encode(s)) == s` for every string.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from centelha.errors import CentelhaError

EOT = "<|endoftext|>"
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (the ByteLevel alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


BYTE_OF_CHAR = {c: b for b, c in _gpt2_bytes_to_unicode().items()}


class Tokenizer:
    """Encode text to ids and back; knows its special tokens and each token's bytes."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.kind = _detect_kind(hf)
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.special_ids = {t.content: i for i, t in hf.get_added_tokens_decoder().items()
                            if t.special}
        self.special_tokens = {i: s for s, i in self.special_ids.items()}
        self.token_bytes = self._build_token_bytes()
        self.eot_id = self.special_ids.get(EOT)

    # -- loading and saving -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise CentelhaError(f"tokenizer file not found: {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception for bad files
            raise CentelhaError(f"{path} is not a valid tokenizer.json: {e}") from None
        return cls(hf)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        self.hf.save(str(path))

    def to_str(self) -> str:
        return self.hf.to_str()

    # -- encoding and decoding --------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token text (`<|endoftext|>`) in user text is
        spelt as ordinary characters unless `allow_special`, so data cannot forge them."""
        self.hf.encode_special_tokens = not allow_special
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once, on all cores (the Rust side parallelises)."""
        self.hf.encode_special_tokens = True
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self.token_bytes
        return b"".join(table[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def id_to_token(self, i: int) -> str:
        return self.hf.id_to_token(i)

    def _build_token_bytes(self) -> list[bytes]:
        table = []
        for i in range(self.vocab_size):
            token = self.hf.id_to_token(i)
            if token is None:
                table.append(b"")
            elif i in self.special_tokens:
                table.append(token.encode("utf-8"))
            elif self.kind == "bpe":
                table.append(bytes(BYTE_OF_CHAR[c] for c in token))
            elif token in BYTE_INDEX:
                table.append(bytes([BYTE_INDEX[token]]))
            else:
                table.append(token.encode("utf-8"))
        return table


BYTE_INDEX = {t: b for b, t in enumerate(BYTE_TOKENS)}


class StreamDecoder:
    """Turns token ids into text as they arrive, holding back an incomplete character."""

    def __init__(self, tokenizer: Tokenizer):
        self.table = tokenizer.token_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self.decoder.decode(self.table[token_id])

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


def _detect_kind(hf: HFTokenizer) -> str:
    spec = json.loads(hf.to_str())
    decoder = spec.get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
    if "ByteLevel" in kinds:
        return "bpe"
    if "ByteFallback" in kinds:
        return "char"
    raise CentelhaError("unsupported tokenizer.json: expected a byte-level BPE or a byte-fallback "
                        "tokenizer (made by centelha, GPT-2, Llama-3, Qwen or SmolLM)")


# -- training ---------------------------------------------------------------------------
def train_bpe(texts: Iterator[str] | list[str], vocab_size: int,
              special_tokens: tuple[str, ...] = (EOT,)) -> Tokenizer:
    """Byte-level BPE with `vocab_size` tokens (256 bytes + merges + specials)."""
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise CentelhaError(f"vocab size must be at least {minimum} for byte-level BPE")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def train_char(texts: Iterator[str] | list[str], max_chars: int | None = None,
               special_tokens: tuple[str, ...] = (EOT,)) -> Tokenizer:
    """One token per character seen (the `max_chars` most frequent), bytes for the rest."""
    counts: dict[str, int] = {}
    for text in texts:
        for ch in text:
            counts[ch] = counts.get(ch, 0) + 1
    chars = sorted(counts, key=lambda c: (-counts[c], c))
    if max_chars is not None:
        chars = chars[:max(0, max_chars)]
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *BYTE_TOKENS, *sorted(chars)]:
        vocab.setdefault(token, len(vocab))
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    hf.add_special_tokens(list(special_tokens))
    return Tokenizer(hf)
