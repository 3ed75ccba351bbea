"""Preference pairs for DPO: `{"prompt", "chosen", "rejected"}` JSONL in, token ids out.

`prompt` is a string (one user message) or a list of chat messages; `chosen` and
`rejected` are strings (one assistant answer each) or lists of messages that continue the
prompt. Each side is rendered with the model's chat template as a whole conversation and
masked as SFT masks it (`sft_data.assistant_mask`), then everything up to the end of the
prompt is unmasked: only the response being compared is scored, even when the prompt
itself holds earlier assistant turns. Errors name the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from centelha.errors import CentelhaError
from centelha.finetune.sft_data import (
    SFTExample,
    assistant_mask,
    checked_messages,
    records,
    to_example,
)
from centelha.generate import with_bos
from centelha.template import encode_chat


@dataclass
class PreferencePair:
    chosen: SFTExample
    rejected: SFTExample
    where: str


def read_pairs(path: str | Path, tokenizer, max_length: int | None = None
               ) -> list[PreferencePair]:
    pairs = []
    for where, record in records(path):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
        if missing:
            raise CentelhaError(f"{where}: a preference pair needs prompt, chosen and "
                                f"rejected (missing {', '.join(missing)})")
        prompt = _messages(record["prompt"], "user", where, "prompt")
        sides = [_side(tokenizer, prompt, _messages(record[k], "assistant", where, k),
                       f"{where} ({k})", max_length) for k in ("chosen", "rejected")]
        pairs.append(PreferencePair(*sides, where))
    if not pairs:
        raise CentelhaError(f"{path}: no preference pairs (one JSON object a line)")
    return pairs


def _messages(value, role: str, where: str, key: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value:
        return value
    raise CentelhaError(f"{where}: {key} must be a string or a non-empty list of messages")


def _side(tokenizer, prompt: list[dict], response: list[dict], where: str,
          max_length: int | None) -> SFTExample:
    messages = checked_messages({"messages": prompt + response}, where)
    if messages[-1]["role"] != "assistant":
        raise CentelhaError(f"{where}: the response must end with an assistant message")
    ids, mask = assistant_mask(tokenizer, messages, where)
    prompt_length = len(with_bos(tokenizer, encode_chat(tokenizer, prompt, True)))
    mask = [m and i >= prompt_length for i, m in enumerate(mask)]
    if not any(mask[1:]):
        raise CentelhaError(f"{where}: the response renders no tokens to score")
    example = to_example(ids, mask, where)
    if max_length is not None and len(example.ids) > max_length:
        raise CentelhaError(f"{where}: {len(example.ids) + 1} tokens, more than "
                            f"objective.max_length + 1 = {max_length + 1}")
    return example
