"""`Tokenizer`: byte-level BPE (or characters with byte fallback) over HF `tokenizers`.

Two kinds, both saved as one `tokenizer.json` that HF `tokenizers` reads:
- "bpe": GPT-2-style byte-level BPE. Text becomes UTF-8 bytes first, so every string
  round-trips, whatever its script.
- "char": one token per character seen in training; any other character is spelt as its
  UTF-8 bytes (`<0xE2>` …), as Llama's SentencePiece tokenizers do. Also exact.
- "spm": SentencePiece-style tokenizers of imported models (Llama 2, Mistral): `▁` stands
  for a space, unknown characters fall back to bytes.

Beside `tokenizer.json`, an optional `tokenizer_config.json` (Hugging Face's name and
keys) holds what the vocabulary alone does not say: the chat template, the BOS/EOS
tokens and whether prompts start with BOS (where it does not say, the post-processor of
`tokenizer.json` does, as in Llama 3's, and as `transformers` reads it); and an optional
`generation_config.json` (Hugging Face's too) lists every token that ends a generation
(`eos_token_id`), when there are more than EOS and `<|endoftext|>` (Llama 3's `<|eot_id|>`,
GGUF's eot/eom).

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
from centelha.jsonfile import read_json_object

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


CONFIG_KEYS = ("chat_template", "bos_token", "eos_token", "add_bos_token")


def _token_text(value) -> str | None:
    """tokenizer_config.json spells tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Encode text to ids and back; knows its special tokens and each token's bytes."""

    def __init__(self, hf: HFTokenizer, config: dict | None = None):
        self.hf = hf
        spec = json.loads(hf.to_str())
        self.kind, self.strip_leading_space = _detect_kind(spec)
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.special_ids = {t.content: i for i, t in hf.get_added_tokens_decoder().items()
                            if t.special}
        self.special_tokens = {i: s for s, i in self.special_ids.items()}
        self.token_bytes = self._build_token_bytes()
        self.eot_id = self.special_ids.get(EOT)
        self.config = {k: v for k, v in (config or {}).items() if k in CONFIG_KEYS}
        self.chat_template: str | None = self.config.get("chat_template")
        self.bos_id = self._id_of(self.config.get("bos_token"))
        self.eos_id = self._id_of(self.config.get("eos_token"))
        add_bos = self.config.get("add_bos_token")
        if add_bos is None:  # then tokenizer.json says, as transformers reads it
            add_bos = _bos_of_post_processor(spec) == self.bos_token
        self.add_bos = bool(add_bos) and self.bos_id is not None
        # generation ends at any of these
        self.stop_ids = {i for i in (self.eot_id, self.eos_id) if i is not None}

    def _id_of(self, token) -> int | None:
        text = _token_text(token)
        return None if text is None else self.hf.token_to_id(text)

    @property
    def bos_token(self) -> str:
        return self.id_to_token(self.bos_id) if self.bos_id is not None else ""

    @property
    def eos_token(self) -> str:
        return self.id_to_token(self.eos_id) if self.eos_id is not None else ""

    # -- loading and saving -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """From `tokenizer.json` (a file, or a folder that holds it and maybe a
        `tokenizer_config.json`)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise CentelhaError(f"tokenizer file not found: {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except BaseException as e:
            # The Rust side raises plain Exception for bad files, and for some of them
            # panics: pyo3's PanicException derives from BaseException. Anything else
            # (KeyboardInterrupt, SystemExit) goes on.
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise
            raise CentelhaError(f"{path} is not a valid tokenizer.json: {e}") from None
        tokenizer = cls(hf, read_tokenizer_config(path.parent / "tokenizer_config.json"))
        tokenizer.stop_ids |= read_stop_ids(path.parent / "generation_config.json",
                                            tokenizer.vocab_size)
        return tokenizer

    @property
    def extra_stop_ids(self) -> set[int]:
        """Stop ids beyond EOS and <|endoftext|>: the ones a file must list to keep."""
        return self.stop_ids - {self.eot_id, self.eos_id}

    def generation_config(self) -> dict:
        """Hugging Face's generation_config.json keys for this tokenizer's stop ids."""
        config: dict = {"eos_token_id": sorted(self.stop_ids)}
        if self.bos_id is not None:
            config["bos_token_id"] = self.bos_id
        return config

    def files(self) -> dict[str, str]:
        """The files that save this tokenizer: name → text."""
        files = {"tokenizer.json": self.hf.to_str()}
        if self.config:
            files["tokenizer_config.json"] = json.dumps(self.config, indent=2,
                                                        ensure_ascii=False) + "\n"
        if self.extra_stop_ids:
            files["generation_config.json"] = json.dumps(self.generation_config(),
                                                         indent=2) + "\n"
        return files

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in self.files().items():
            (folder / name).write_text(text, encoding="utf-8")

    def to_str(self) -> str:
        return self.hf.to_str()

    # -- encoding and decoding --------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token text (`<|endoftext|>`) in user text is
        spelt as ordinary characters unless `allow_special`, so data cannot forge them."""
        self.hf.encode_special_tokens = not allow_special
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str, allow_special: bool = False
                            ) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of `text` and each token's (start, end) character span in it."""
        self.hf.encode_special_tokens = not allow_special
        encoding = self.hf.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once, on all cores (the Rust side parallelises)."""
        self.hf.encode_special_tokens = True
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self.token_bytes
        return b"".join(table[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        text = self.decode_bytes(ids).decode("utf-8", errors="replace")
        if self.strip_leading_space and text.startswith(" "):
            text = text[1:]  # SentencePiece's dummy prefix
        return text

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
                table.append(bytes(BYTE_OF_CHAR.get(c, 0x3F) for c in token))
            elif token in BYTE_INDEX:
                table.append(bytes([BYTE_INDEX[token]]))
            elif self.kind == "spm":
                table.append(token.replace("\u2581", " ").encode("utf-8"))
            else:
                table.append(token.encode("utf-8"))
        return table


def read_tokenizer_config(path: Path) -> dict:
    return read_json_object(path, missing_ok=True) or {}


def read_stop_ids(path: Path, vocab_size: int) -> set[int]:
    """The `eos_token_id` (one id or a list) of a generation_config.json, if there is one."""
    values = read_json_object(path, missing_ok=True) or {}
    eos = values.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos]
    return {i for i in ids if isinstance(i, int) and not isinstance(i, bool)
            and 0 <= i < vocab_size}


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


def _detect_kind(spec: dict) -> tuple[str, bool]:
    """("bpe" | "spm" | "char", whether decoding strips one leading space) of a
    tokenizer.json."""
    decoder = spec.get("decoder") or {}
    parts = [decoder, *decoder.get("decoders", [])]
    kinds = {d.get("type") for d in parts}
    strip = any(d.get("type") == "Strip" and d.get("start", 0) > 0 for d in parts)
    if "ByteLevel" in kinds:
        return "bpe", False
    if "Metaspace" in kinds or any(d.get("type") == "Replace" and
                                   "\u2581" in json.dumps(d, ensure_ascii=False)
                                   for d in parts):
        return "spm", strip or "Metaspace" in kinds
    if "ByteFallback" in kinds:
        return "char", False
    raise CentelhaError("unsupported tokenizer.json: expected a byte-level BPE or a byte-fallback "
                        "tokenizer (made by centelha, GPT-2, Llama-3, Qwen or SmolLM)")


def _bos_of_post_processor(spec: dict) -> str | None:
    """The special token a tokenizer.json's post-processor puts before every text, if any."""
    post = spec.get("post_processor") or {}
    for step in [post, *post.get("processors", [])]:
        if step.get("type") == "TemplateProcessing":
            first = (step.get("single") or [{}])[0]
            return (first.get("SpecialToken") or {}).get("id")
    return None


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
