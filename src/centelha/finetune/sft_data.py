"""Instruction data for SFT: chat conversations in, token ids and the assistant-token mask out.

A data file is JSONL, one conversation a line, in the OpenAI / Hugging Face chat shape:
`{"messages": [{"role": "system", "content": "..."}, {"role": "user", ...},
{"role": "assistant", ...}, ...]}` — multi-turn, with an optional system (or developer)
message. Each conversation is rendered with the model's own chat template and encoded as
`encode_chat` does (message contents never become special tokens), with BOS where the
model expects it (`with_bos`).

Loss only on assistant tokens, for any template. Templates are programs, so the mask is
not found by searching the text for role markers; it is found by rendering. For each
assistant turn i:
- the *prompt* is the conversation before turn i rendered with `add_generation_prompt=True`
  (it ends with the template's assistant header);
- the *turn* is the conversation up to and including turn i, rendered without it.
The tokens the turn adds to the prompt are that turn: the answer and its end-of-turn
token. Both must be token prefixes of the whole conversation's ids; a template that
rewrites earlier turns (one that strips reasoning from past answers, say), or text whose
tokens merge across a turn boundary, breaks that, and the conversation is refused with the
line and turn rather than trained on a mask that is off by a few tokens.

Conventions a training loop relies on:
- The end-of-turn token is scored, so the model learns to stop. What a template writes
  after it inside the same turn (ChatML's `<|im_end|>\\n`) is not: generation stops at the
  end-of-turn token, so the model never writes that text; it stays in the ids as input.
  "End of turn" is the last of the tokenizer's stop tokens in the turn, or else the last
  special token; a template with no special tokens at all (the plain "User:/Assistant:"
  layout) has every token of the turn scored, its closing newline included.
- Messages after the last assistant turn are dropped: nothing in them is scored.
- `ids` and `targets` follow `Transformer.forward`: `targets[t]` is the token after
  `ids[t]` when that token is an assistant token, and -100 (not scored) otherwise. A
  conversation of n tokens gives n - 1 positions.
- Packing puts whole examples one after another in rows of `block_size` positions (first
  fit, in file order), so an answer is never cut from its prompt; the rest of a row is
  padding with target -100. Attention is not reset between the examples of a row (the
  model's causal mask is the usual one): a later example sees the earlier ones, which costs
  nothing in correctness of the targets, and is the common trade for packing's speed. An
  example longer than `block_size` is refused, not truncated: a truncated answer loses its
  end-of-turn token and would teach the model not to stop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from centelha.data import read_text
from centelha.errors import CentelhaError
from centelha.generate import with_bos
from centelha.jsonfile import json_lines
from centelha.model import IGNORE
from centelha.template import check_messages, encode_chat


@dataclass
class Conversation:
    messages: list[dict]
    where: str  # "file:line", for error messages


@dataclass
class SFTExample:
    """One conversation as model input: `targets[t]` is what position t must predict."""

    ids: list[int]
    targets: list[int]
    where: str

    @property
    def scored(self) -> int:
        return sum(t != IGNORE for t in self.targets)


# -- reading -----------------------------------------------------------------------------
def records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for each line of a JSONL file (the one DPO pairs use too)."""
    path = Path(path)
    if not path.is_file():
        raise CentelhaError(f"file not found: {path}")
    for number, record in json_lines(path, read_text(path)):
        yield f"{path}:{number}", record


def read_conversations(path: str | Path) -> list[Conversation]:
    """The conversations of a JSONL file, each checked; errors name the file and line."""
    conversations = [Conversation(checked_messages(record, where), where)
                     for where, record in records(path)]
    if not conversations:
        raise CentelhaError(f"{path}: no conversations (one JSON object a line)")
    return conversations


def checked_messages(record: dict, where: str) -> list[dict]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise CentelhaError(f"{where}: each line needs a non-empty list \"messages\"")
    try:
        check_messages(messages)
    except CentelhaError as e:
        raise CentelhaError(f"{where}: {e}") from None
    if not any(m["role"] == "assistant" for m in messages):
        raise CentelhaError(f"{where}: no assistant message, so nothing to learn from")
    if messages[0]["role"] == "assistant":  # its prompt would be an empty conversation
        raise CentelhaError(f"{where}: the conversation starts with an assistant message; "
                            "put the user (or system) message it answers before it")
    return messages


# -- the assistant-token mask ------------------------------------------------------------
def assistant_mask(tokenizer, messages: list[dict], where: str = "conversation"
                   ) -> tuple[list[int], list[bool]]:
    """The conversation's token ids (up to its last assistant turn) and, for each token,
    whether it belongs to an assistant turn (and so is scored when predicted)."""
    def encode(conversation: list[dict], generation_prompt: bool) -> list[int]:
        return with_bos(tokenizer, encode_chat(tokenizer, conversation, generation_prompt))

    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    ids = encode(messages[:turns[-1] + 1], False)
    mask = [False] * len(ids)
    for number, i in enumerate(turns, start=1):
        prompt, turn = encode(messages[:i], True), encode(messages[:i + 1], False)
        if not (_starts_with(turn, prompt) and _starts_with(ids, turn)):
            raise CentelhaError(
                f"{where}: assistant turn {number} does not tokenize as a prefix of the "
                "whole conversation (the chat template rewrites earlier turns, or tokens "
                "merge across the turn boundary), so its mask cannot be found")
        end = len(prompt) + _scored_length(tokenizer, turn[len(prompt):])
        mask[len(prompt):end] = [True] * (end - len(prompt))
    if not any(mask[1:]):  # the first token has nothing before it to be predicted from
        raise CentelhaError(f"{where}: the chat template renders no assistant tokens, so "
                            "nothing would be scored")
    return ids, mask


def _starts_with(ids: list[int], prefix: list[int]) -> bool:
    return ids[:len(prefix)] == prefix


def _scored_length(tokenizer, turn: list[int]) -> int:
    """How many of a turn's tokens are scored: up to its end-of-turn token (see above)."""
    for marks in (tokenizer.stop_ids, tokenizer.special_tokens):
        ends = [k for k, token in enumerate(turn) if token in marks]
        if ends:
            return ends[-1] + 1
    return len(turn)


def to_example(ids: list[int], mask: list[bool], where: str) -> SFTExample:
    """Shift by one for `Transformer.forward`: position t predicts token t + 1."""
    targets = [token if scored else IGNORE for token, scored in zip(ids[1:], mask[1:], strict=True)]
    return SFTExample(ids[:-1], targets, where)


def load_sft(path: str | Path, tokenizer, block_size: int | None = None) -> list[SFTExample]:
    """Every conversation of a JSONL file as an example; with `block_size`, one that does
    not fit is refused with its line."""
    examples = []
    for c in read_conversations(path):
        example = to_example(*assistant_mask(tokenizer, c.messages, c.where), c.where)
        if block_size is not None and len(example.ids) > block_size:
            raise CentelhaError(f"{c.where}: {len(example.ids) + 1} tokens, more than "
                                f"block_size + 1 = {block_size + 1} (raise block_size, or "
                                "shorten the conversation)")
        examples.append(example)
    return examples


# -- batches -----------------------------------------------------------------------------
def pack(examples: list[SFTExample], block_size: int, pad_id: int = 0
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole examples packed first-fit into rows of `block_size`: (ids, targets), each
    (rows, block_size) int64, padding scored -100."""
    rows: list[tuple[list[int], list[int]]] = []
    free: list[int] = []  # room left in each row
    for example in examples:
        size = len(example.ids)
        if size > block_size:
            raise CentelhaError(f"{example.where}: {size} positions do not fit in a row of "
                                f"block_size {block_size}")
        row = next((r for r, room in enumerate(free) if room >= size), None)
        if row is None:
            rows.append(([], []))
            free.append(block_size)
            row = len(rows) - 1
        rows[row][0].extend(example.ids)
        rows[row][1].extend(example.targets)
        free[row] -= size
    return _pad(rows, block_size, pad_id)


def collate(examples: list[SFTExample], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One example a row, padded on the right to the longest: (ids, targets) int64."""
    length = max(len(e.ids) for e in examples)
    return _pad([(e.ids, e.targets) for e in examples], length, pad_id)


def _pad(rows: list[tuple[list[int], list[int]]], length: int, pad_id: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    # padding goes on the right: causal attention keeps it out of every real position
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for r, (row_ids, row_targets) in enumerate(rows):
        ids[r, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        targets[r, :len(row_targets)] = torch.tensor(row_targets, dtype=torch.long)
    return ids, targets
