"""From text files to token shards, and from shards to training windows.

`prepare` reads .txt/.md/.jsonl files, normalizes the text (Unicode NFC, `\\n` line
endings), optionally masks personal data, splits train/val by document, trains a
tokenizer on the training documents only, tokenizes everything (in parallel, in the
tokenizer's Rust threads) and writes flat `.bin` shards of uint16 ids (uint32 when the
vocabulary needs it) plus a `meta.json` that says how to read them back.

Design choices a reader should know:
- A .txt or .md file is cut at line breaks into sections of about 20,000 characters,
  and sections are the "documents" of the train/val split: one novel or one big file
  still gives a validation set, and the model never sees a val passage in training.
- Every document ends with `<|endoftext|>`, so the model learns where texts stop.
- The unigram baseline (cross-entropy of val tokens under the train token frequencies)
  is stored with the data: a model that does not beat it has learned nothing of order.
- `TokenWindows` reads shards through `np.memmap`, so a corpus larger than memory works.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from centelha.errors import CentelhaError
from centelha.jsonfile import json_lines, read_json_object
from centelha.redact import redact
from centelha.tokenizer import Tokenizer, train_bpe, train_char

TEXT_SUFFIXES = (".txt", ".md")
SUFFIXES = (*TEXT_SUFFIXES, ".jsonl")
SECTION_CHARS = 20_000
SHARD_TOKENS = 1 << 27


# -- reading ------------------------------------------------------------------------------
def find_files(inputs: list[str | Path]) -> list[Path]:
    """Every .txt/.md/.jsonl file named or found (recursively) under the inputs."""
    if not inputs:
        raise CentelhaError("no corpus given: name files or folders of .txt, .md or .jsonl")
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in SUFFIXES
                           and p.is_file() and not p.name.startswith("."))
            if not found:
                raise CentelhaError(f"no .txt, .md or .jsonl files in {item}")
            files.extend(found)
        elif item.is_file():
            if item.suffix.lower() not in SUFFIXES:
                raise CentelhaError(f"{item}: unsupported file type (use .txt, .md or .jsonl)")
            files.append(item)
        else:
            raise CentelhaError(f"corpus path not found: {item}")
    return files


def normalize(text: str) -> str:
    """NFC, no BOM, `\\n` line endings: one spelling for the same text."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text)


def read_text(path: Path) -> str:
    """A text file's contents (a byte-order mark dropped), or one line naming the file and,
    for bytes that are not UTF-8, the line they are on."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CentelhaError(f"file not found: {path}") from None
    except OSError as e:
        raise CentelhaError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise CentelhaError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}); "
                            "save the file as UTF-8") from None


def split_sections(text: str, size: int = SECTION_CHARS) -> list[str]:
    """Cut at line breaks into pieces of about `size` characters."""
    sections, current, length = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        length += len(line)
        if length >= size:
            sections.append("".join(current))
            current, length = [], 0
    if current:
        sections.append("".join(current))
    return sections


def read_jsonl(path: Path) -> Iterator[str]:
    for number, record in json_lines(path, read_text(path)):
        text = record.get("text")
        if not isinstance(text, str):
            raise CentelhaError(f"{path}:{number}: each line needs a string field \"text\"")
        yield text


def read_documents(files: list[Path], redact_personal: bool = False) -> list[str]:
    documents = []
    for path in files:
        if path.suffix.lower() == ".jsonl":
            texts = list(read_jsonl(path))
        else:
            texts = split_sections(normalize(read_text(path)))
        for text in texts:
            text = normalize(text)
            if redact_personal:
                text = redact(text)
            if text.strip():
                documents.append(text)
    if not documents:
        raise CentelhaError("the corpus is empty: no text found in " +
                            ", ".join(str(f) for f in files[:3]))
    return documents


def split_train_val(documents: list[str], val_fraction: float,
                    seed: int = 0) -> tuple[list[str], list[str]]:
    """Hold out whole documents, chosen at random (but reproducibly) for validation."""
    if len(documents) < 2:
        raise CentelhaError("the corpus is too small to split into train and validation "
                            "(it has one short document); add more text")
    if not 0.0 < val_fraction < 1.0:
        raise CentelhaError(f"val fraction must be between 0 and 1, not {val_fraction}")
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_val = min(len(documents) - 1, max(1, round(len(documents) * val_fraction)))
    val_ids = set(order[:n_val])
    train = [d for i, d in enumerate(documents) if i not in val_ids]
    val = [d for i, d in enumerate(documents) if i in val_ids]
    return train, val


# -- writing shards -----------------------------------------------------------------------
def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_split(documents: list[str], tokenizer: Tokenizer, out: Path, split: str,
                progress: Progress | None = None, batch: int = 64) -> dict:
    """Tokenize `documents` into `split_0000.bin`… and return counts and token histogram."""
    dtype = token_dtype(tokenizer.vocab_size)
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    shards, total, shard_tokens, handle = [], 0, 0, None
    task = progress.add_task(f"tokenizing {split}", total=len(documents)) if progress else None
    try:
        for start in range(0, len(documents), batch):
            for ids in tokenizer.encode_batch(documents[start:start + batch]):
                ids.append(tokenizer.eot_id)
                array = np.asarray(ids, dtype=dtype)
                if handle is None or shard_tokens + len(array) > SHARD_TOKENS:
                    if handle:
                        handle.close()
                    shards.append(f"{split}_{len(shards):04d}.bin")
                    handle, shard_tokens = open(out / shards[-1], "wb"), 0
                array.tofile(handle)
                shard_tokens += len(array)
                total += len(array)
                counts += np.bincount(array, minlength=tokenizer.vocab_size)
            if progress:
                progress.update(task, advance=len(documents[start:start + batch]))
    finally:
        if handle:
            handle.close()
    return {"shards": shards, "tokens": int(total), "documents": len(documents),
            "counts": counts}


def unigram_loss(train_counts: np.ndarray, val_counts: np.ndarray) -> float:
    """Cross-entropy (nats/token) of val under add-one-smoothed train unigram frequencies."""
    probs = (train_counts + 1) / (train_counts.sum() + len(train_counts))
    return float(-(val_counts * np.log(probs)).sum() / max(1, val_counts.sum()))


@dataclass
class PreparedData:
    path: Path
    meta: dict


def prepare(inputs: list[str | Path], out: str | Path, vocab_size: int = 4096,
            kind: str = "bpe", val_fraction: float = 0.05, redact_personal: bool = False,
            seed: int = 0, show_progress: bool = True,
            tokenizer: Tokenizer | None = None) -> PreparedData:
    """Corpus files → `out/` with tokenizer.json, train/val shards and meta.json.
    `tokenizer`: use this one (a model's, for continued pretraining) instead of training
    a new one."""
    if kind not in ("bpe", "char"):
        raise CentelhaError(f"tokenizer kind must be 'bpe' or 'char', not {kind!r}")
    files = find_files(inputs)
    documents = read_documents(files, redact_personal)
    train_docs, val_docs = split_train_val(documents, val_fraction, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None and kind == "bpe":
        tokenizer = train_bpe(train_docs, vocab_size)
    elif tokenizer is None:
        tokenizer = train_char(train_docs, max_chars=vocab_size - 257)
    tokenizer.save(out)
    with Progress(disable=not show_progress, transient=True) as progress:
        train = write_split(train_docs, tokenizer, out, "train", progress)
        val = write_split(val_docs, tokenizer, out, "val", progress)
    meta = {
        "format": "centelha-tokens-v1",
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_kind": tokenizer.kind,
        "eot_id": tokenizer.eot_id,
        "redacted": redact_personal,
        "sources": [str(f) for f in files],
        "unigram_val_loss": unigram_loss(train["counts"], val["counts"]),
        "splits": {name: {k: v for k, v in split.items() if k != "counts"}
                   for name, split in (("train", train), ("val", val))},
        "characters": {"train": sum(map(len, train_docs)), "val": sum(map(len, val_docs))},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return PreparedData(out, meta)


# -- reading shards back ------------------------------------------------------------------
def load_meta(path: str | Path) -> dict:
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        raise CentelhaError(f"{path} is not a prepared data folder (no meta.json); "
                            "make one with `centelha prepare`")
    try:
        meta = read_json_object(meta_path)
        meta["splits"]["train"], meta["splits"]["val"]  # noqa: B018 - presence check
    except (CentelhaError, KeyError, TypeError):
        raise CentelhaError(f"{meta_path} is damaged; run `centelha prepare` again") from None
    return meta


class TokenWindows:
    """(x, y) windows of one split: y is x shifted by one token (next-token prediction)."""

    def __init__(self, path: str | Path, split: str, block_size: int):
        self.path = Path(path)
        meta = load_meta(path)
        self.block_size = block_size
        dtype = np.dtype(meta["dtype"])
        self.shards = []
        for name in meta["splits"][split]["shards"]:
            file = self.path / name
            if not file.is_file():
                raise CentelhaError(f"missing shard {file}; run `centelha prepare` again")
            self.shards.append(np.memmap(file, dtype=dtype, mode="r"))
        self.tokens = sum(len(s) for s in self.shards)
        usable = [len(s) - block_size for s in self.shards]
        if max(usable, default=0) < 1:
            raise CentelhaError(
                f"the {split} split has {self.tokens} tokens, too few for windows of "
                f"{block_size} + 1; lower block_size or add text"
            )
        self.weights = torch.tensor([max(0, u) for u in usable], dtype=torch.float64)

    def _window(self, shard: int, offset: int) -> np.ndarray:
        return np.asarray(self.shards[shard][offset:offset + self.block_size + 1], dtype=np.int64)

    def sample(self, batch_size: int, generator: torch.Generator,
               rows: slice | None = None) -> tuple[torch.Tensor, ...]:
        """A batch of windows at random places (the generator's state is the data position).
        `rows`: read only these of the batch_size windows drawn (a distributed rank's share;
        the generator advances the same either way, so every rank stays in step)."""
        shards = torch.multinomial(self.weights, batch_size, replacement=True,
                                   generator=generator).tolist()
        places = []
        for shard in shards:
            high = int(self.weights[shard].item())
            places.append((shard, int(torch.randint(high, (1,), generator=generator).item())))
        batch = torch.from_numpy(np.stack([self._window(*p) for p in places[rows or slice(None)]]))
        return batch[:, :-1], batch[:, 1:]

    def sequential(self, batch_size: int, max_batches: int | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows from the start: the same ones every time (evaluation)."""
        rows = []
        for shard, data in enumerate(self.shards):
            for offset in range(0, len(data) - self.block_size, self.block_size):
                rows.append(self._window(shard, offset))
                if len(rows) == batch_size:
                    batch = torch.from_numpy(np.stack(rows))
                    yield batch[:, :-1], batch[:, 1:]
                    rows = []
                    max_batches = None if max_batches is None else max_batches - 1
                    if max_batches == 0:
                        return
        if rows:
            batch = torch.from_numpy(np.stack(rows))
            yield batch[:, :-1], batch[:, 1:]

